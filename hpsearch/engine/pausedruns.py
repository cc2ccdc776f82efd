"""Where a halving phase keeps its ladders' runs between levels: one saved run and its epoch reports per ladder.

A ladder's run is started for its top rung, trained to the level its ladder reached, and saved here; whichever
process trains the ladder's next level takes it up, and without the files (another machine, a crash before the save)
trains it again from its start, to the same numbers. The reports carry a SHA-256 of the run and of themselves, so a
run is taken up only as it was saved: files altered, cut short, replaced by a folder or a FIFO, or left half-saved
by a crash are refused, and the run trains from its start instead. Knows files only: no storage, no Optuna.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from hpsearch.backends.base import Training, replacing
from hpsearch.files import SizeBound, file_checksum, read_bounded
from hpsearch.search.ladders import Ladders

__all__ = ["KEPT_WAITING", "PausedRun", "PausedRuns"]

REPORTS = SizeBound("a paused run's reports", 64 * 2**20)  # a few numbers per epoch, thousands of epochs
# per rung of an ASHA phase, the configurations waiting there for a promotion whose paused runs are kept, the best
# ones (see hpsearch.search.asha.admit): the next promotions find their runs, and the disk does not grow with n_trials
KEPT_WAITING = 4


@dataclass(frozen=True)
class PausedRun:
    """One ladder's run: started for its top rung (``params``; every rung has the ladder's seed), saved at ``path``
    (the trainable's own format, one file) with its epoch reports and their checksum beside it (``path`` +
    ``.json``)."""

    params: dict[str, Any]
    path: Path
    top: bool  # whether the claimed rungs end at the ladder's top: the run is not saved again, the files go

    @property
    def reports_path(self) -> Path:
        return self.path.with_suffix(".json")

    def reports(self) -> tuple[int, list[tuple[int, dict[str, Any]]]] | None:
        """The saved run's budget and its epoch reports, or None when no run is saved. Raises ValueError, saying why,
        when what is there is not the run as it was saved: either file not a regular file, reports that do not
        parse, a checksum that does not match."""
        if not any(os.path.lexists(file) for file in (self.path, self.reports_path)):
            return None
        try:
            saved = json.loads(read_bounded(self.reports_path, REPORTS))
            budget, epochs, checksum = saved["budget"], saved["epochs"], saved["sha256"]
        except OSError as exc:  # FileRefused among them: a folder, a FIFO, a file too large
            raise ValueError(f"its reports: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"its reports are not a saved run's ({exc})") from None
        try:
            matches = checksum == _checksum(self.path, budget, epochs)
        except OSError as exc:
            raise ValueError(f"the run: {exc.strerror or exc}") from None
        if not matches:
            raise ValueError("the run or its reports changed since they were saved (their checksum differs)")
        return budget, [(epoch, metrics) for epoch, metrics in epochs]

    def save(self, training: Training, epochs: list[tuple[int, dict[str, Any]]]) -> None:
        """Keep ``training`` and its epoch reports for the ladder's next level, in place of whatever was there.

        The run is written first, its reports with their checksum last, each whole (renamed into place): a crash
        in between leaves reports that do not match the run, which is then trained again from its start."""
        self.forget()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        training.save(self.path)
        epochs = json.loads(json.dumps(epochs, default=float))  # as they will be read back
        text = json.dumps({"budget": training.budget, "epochs": epochs,
                           "sha256": _checksum(self.path, training.budget, epochs)})
        with replacing(self.reports_path) as file:
            file.write(text.encode())

    def forget(self) -> None:
        """Remove the run's files, whatever stands at their paths (a folder too); what cannot be removed stays, and
        is refused when the run is next taken up."""
        for file in (self.path, self.reports_path):
            if file.is_dir() and not file.is_symlink():
                shutil.rmtree(file, ignore_errors=True)
            else:
                try:
                    file.unlink(missing_ok=True)
                except OSError:
                    pass


def _checksum(run: Path, budget: Any, epochs: Any) -> str:
    """The SHA-256 of the run file's bytes and of the reports saved with it."""
    return file_checksum(run, {"budget": budget, "epochs": epochs}, what="a paused run")


@dataclass(frozen=True)
class PausedRuns:
    """A halving phase's ladders' runs, one pair of files each in ``folder``."""

    folder: Path
    found: Ladders
    points: list[dict[str, Any]]

    def __call__(self, ladder: int, point: int | None = None) -> PausedRun:
        """Ladder ``ladder``'s run; ``point``: the last rung a claim trains (the top one: the run is let go after)."""
        rungs = self.found.rungs[ladder]
        return PausedRun(self.points[rungs[-1]], self.folder / f"ladder-{ladder}", top=point == rungs[-1])

    def forget(self, ladders: Iterable[int]) -> None:
        """Remove the runs of ``ladders`` (one that goes on later trains again from its start)."""
        for ladder in ladders:
            self(ladder).forget()

    def clear(self) -> None:
        """Forget every run kept here (a new phase takes up nothing an earlier study of its name left)."""
        shutil.rmtree(self.folder, ignore_errors=True)
