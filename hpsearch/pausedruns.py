"""Where a halving phase keeps its ladders' runs between levels: one saved run and its epoch reports per ladder.

A ladder's run is started for its top rung, trained to the level its ladder reached, and saved here; whichever
process trains the ladder's next level takes it up, and without the files (another machine, a crash before the save)
trains it again from its start, to the same numbers. Knows files only: no storage, no Optuna.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.backends.base import Training
from hpsearch.ladders import Ladders

__all__ = ["PausedRun", "PausedRuns"]


@dataclass(frozen=True)
class PausedRun:
    """One ladder's run: started for its top rung (``params``; every rung has the ladder's seed), saved at ``path``
    (the trainable's own format) with its epoch reports beside it (``path`` + ``.json``)."""

    params: dict[str, Any]
    path: Path
    top: bool  # whether the claimed rungs end at the ladder's top: the run is not saved again, the files go

    def reports(self) -> tuple[int, list[tuple[int, dict[str, Any]]]] | None:
        """The saved run's budget and its epoch reports, or None when no run is saved; raises for unreadable
        reports."""
        if not self.path.exists():
            return None
        saved = json.loads(self.path.with_suffix(".json").read_text())
        return saved["budget"], [(epoch, metrics) for epoch, metrics in saved["epochs"]]

    def save(self, training: Training, epochs: list[tuple[int, dict[str, Any]]]) -> None:
        """Keep ``training`` and its epoch reports for the ladder's next level."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.with_suffix(".json").write_text(json.dumps({"budget": training.budget, "epochs": epochs},
                                                             default=float))
        training.save(self.path)

    def forget(self) -> None:
        for file in (self.path, self.path.with_suffix(".json")):
            file.unlink(missing_ok=True)


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

    def clear(self) -> None:
        """Forget every run kept here (a new phase takes up nothing an earlier study of its name left)."""
        shutil.rmtree(self.folder, ignore_errors=True)
