"""Where the workers of ``run --workers N`` run: the one face of :class:`~hpsearch.cli.localworkers.LocalWorkers`
(this machine) and :class:`~hpsearch.cli.rayworkers.RayWorkers` (where Ray places them), and how they ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hpsearch.spec.models import StudySpec

__all__ = ["Placement", "WorkersEnded"]


@dataclass(frozen=True)
class WorkersEnded:
    """How the workers of ``run --workers`` ended: each one's exit code (None: it never ran, or was lost), whether a
    signal to the parent stopped them, the trials a signal stopped while they trained, and lines to say first."""

    codes: list[int | None]
    interrupted: bool
    stopped: list[str]
    notes: list[str] = field(default_factory=list)


class Placement(Protocol):
    """Where the workers of ``run --workers N`` run: on this machine (:class:`~hpsearch.cli.localworkers.LocalWorkers`)
    or where Ray places them (:class:`~hpsearch.cli.rayworkers.RayWorkers`)."""

    workers: int

    def plan(self, study: StudySpec, storage_url: str, check: Callable[[], None]) -> None:
        """Decide each worker's share, before anything is made; UserError (one line) for what cannot be placed.
        ``check`` raises where a signal came meanwhile (Ctrl-C while Ray connects)."""

    def check_tracking(self, tracking_uri: str | None) -> None:
        """Say what the workers' MLflow tracking at ``tracking_uri`` would miss where they run."""

    def run(self, args: list[str], env: dict[str, str]) -> WorkersEnded:
        """Run ``hpsearch ARGS`` in each worker, with ``env`` added to its environment, until all have ended."""

    def close(self) -> None:
        """Let go of what :meth:`plan` took up."""
