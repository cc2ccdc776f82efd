"""A study's summary as one typed object: what ``run`` and ``status`` return, what the CLI prints and what
``--json`` writes. The engine fills the stored part (phases, winner, compute); a run adds its time box, its wall and
where MLflow logged it, each a field of its own, so no layer adds keys another does not know of.

Pure data: imports nothing of the engine, the storage or an outside system.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PausedRuns", "StudySummary", "TimeBox", "TrackingRef"]


@dataclass(frozen=True)
class TimeBox:
    """A run the time box ended. scored: the winner's stored result is the current winner's (by this run, an
    earlier one or another worker)."""

    seconds: float
    scored: bool


@dataclass(frozen=True)
class PausedRuns:
    """The disk the halving phases' paused runs take, and the folder they lie in."""

    bytes: int
    folder: str


@dataclass(frozen=True)
class TrackingRef:
    """Where MLflow logs the study: the (masked) tracking URI and the experiment; after a run also the experiment's
    id, the seconds the tracking process spent in MLflow calls and the winner's saved model."""

    uri: str
    experiment: str
    experiment_id: str | None = None
    seconds: float | None = None
    model: str | None = None


@dataclass
class StudySummary:
    """phases: one status per phase (``PhaseView.status``: state, done/total, counts, best value and trial, grid,
    failed points, examples). best: the winning trial (``Driver.best``), None before any completed. complete: every
    phase complete and the winner scored. examples: training examples processed (None: not counted)."""

    study: str
    storage: str
    complete: bool
    phases: list[dict[str, Any]]
    best: dict[str, Any] | None
    examples: int | None = None
    paused_runs: PausedRuns | None = None
    time_box: TimeBox | None = None
    wall_seconds: float | None = None
    tracking: TrackingRef | None = None
    spec: str | None = field(default=None)  # the spec file the CLI ran, for the commands it prints

    def phase(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.phases if p["phase"] == name), None)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: every field; the parts a run did not have (no time box, no MLflow) as null."""
        return dataclasses.asdict(self)
