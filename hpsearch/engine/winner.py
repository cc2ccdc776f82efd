"""The study's best trial so far, kept on disk as it was trained: its model, metrics and curves.

When a trial becomes the best of its study, the process that trained it saves the model (the trainable's own format,
one file) and the trial's training result beside it, so that the study's end scores the winner on the test split,
logs its curves and model and stores its result without training it again. One winner is kept at a time: a better
trial replaces it, and the files of the one it replaced go.

A kept winner is taken up only for the trial it names and only as it was saved: its record carries a SHA-256 of the
model file and of itself, so files altered, cut short, replaced by a folder or a FIFO, or left half-written by a
crash are refused. The end then trains the winner again, to the same numbers, and says why; so it does where the
files are missing (the winner ran on another machine's worker) or the trainable cannot save its models. Knows files
only: no storage, no Optuna; the processes of a study take turns under the lock they are handed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from hpsearch.backends import TrainResult
from hpsearch.backends.base import Trainable, replacing
from hpsearch.errors import one_line
from hpsearch.files import SizeBound, file_checksum, read_bounded

__all__ = ["KeptWinner", "Trial", "rank_of"]

RECORD = SizeBound("a kept winner's record", 256 * 2**20)  # metrics, a curve per metric, a loss per iteration
RECORD_NAME = "winner.json"
MODEL = "a kept winner's model"


def rank_of(value: float, maximize: bool, phase_index: int, number: int) -> tuple[float, int, int]:
    """Where a complete trial ranks in its study, lower first: by its value, then as the study's best breaks ties
    (the earlier phase of the spec, then the lower trial number)."""
    return (-value if maximize else value, phase_index, number)


@dataclass(frozen=True)
class Trial:
    """Which trial a kept winner is: its id, its Optuna study, and what it trained (ids and study names begin again
    in a storage made afresh, and the folder beside it may outlive it)."""

    trial_id: int
    study: str
    trained: str  # its params and seed, as JSON

    @classmethod
    def of(cls, trial_id: int, study: str, params: dict[str, Any], seed: int | None) -> Trial:
        return cls(trial_id, study, json.dumps({"params": params, "seed": seed}, sort_keys=True, default=str))


@dataclass(frozen=True)
class KeptWinner:
    """The kept winner of one study, in ``folder``: ``winner.json`` naming its trial, and the model file it names.
    ``lock``: held while a winner is offered or taken, by every process of the study."""

    folder: Path
    trainable: Trainable
    lock: Callable[[], ContextManager[Any]]

    @property
    def can_keep(self) -> bool:
        """Whether the trainable can save and load its models (a user's trainable may not)."""
        return self.trainable.keeps_models

    def offer(self, trial: Trial, rank: tuple[float, int, int], result: TrainResult, live: set[str]) -> bool:
        """Keep ``result`` (of ``trial``) unless the kept winner ranks before it, or at it; a kept winner of an
        Optuna study not in ``live`` (an earlier generation's) does not count. Returns whether it was kept. Raises
        what the trainable's save raises, or OSError (a full disk): the kept winner, if any, is then the one
        before."""
        if not self.can_keep or result.model is None:
            return False
        with self.lock():
            return self._offer(trial, rank, result, live)

    def withdraw(self, trial: Trial) -> None:
        """Forget the kept winner if it is ``trial``'s (its end was not stored: another worker retries its point)."""
        with self.lock():
            try:
                kept = self._record()
            except ValueError:
                return  # not as it was saved: never taken up
            if kept is not None and Trial(kept["trial_id"], kept["study"], kept["trained"]) == trial:
                (self.folder / RECORD_NAME).unlink(missing_ok=True)
                self._remove_others(keep="")

    def _offer(self, trial: Trial, rank: tuple[float, int, int], result: TrainResult, live: set[str]) -> bool:
        try:
            kept = self._record()
        except ValueError:
            kept = None  # not as it was saved: replaced
        if kept is not None and kept["study"] in live and tuple(kept["rank"]) <= rank:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        model = self.folder / f"trial-{trial.trial_id}{self.trainable.model_suffix or ''}"
        self.trainable.save_model(result.model, result.config, model)
        record = {"trial_id": trial.trial_id, "study": trial.study, "trained": trial.trained, "rank": list(rank),
                  "model": model.name,
                  "metrics": result.metrics, "history": result.history, "loss_history": result.loss_history,
                  "seconds": result.seconds, "config": result.config, "examples": result.examples}
        record = json.loads(json.dumps(record, default=_plain))  # as it will be read back
        with replacing(self.folder / RECORD_NAME) as file:  # the record last: it names a model that is whole
            file.write(json.dumps({**record, "sha256": file_checksum(model, record, what=MODEL)}).encode())
        self._remove_others(keep=model.name)
        return True

    def take(self, trial: Trial) -> TrainResult | str:
        """The kept result of ``trial``, its model loaded; or, as a phrase, why there is none."""
        if not self.can_keep:
            return "the trainable cannot save its models (it has no save_model and load_model)"
        with self.lock():
            try:
                kept = self._record()
            except ValueError as exc:
                return f"the kept winner is refused: {exc}"
            if kept is None or Trial(kept["trial_id"], kept["study"], kept["trained"]) != trial:
                return "its model is not kept here (a worker on another machine trained it, or an earlier version)"
            try:
                model, _ = self.trainable.load_model(self.folder / kept["model"])
            except Exception as exc:  # noqa: BLE001 - a user's load_model too: the winner is trained again instead
                return f"its kept model does not load: {one_line(exc)}"
        return TrainResult(metrics=kept["metrics"], history=kept["history"], loss_history=kept["loss_history"],
                           seconds=kept["seconds"], config=kept["config"], model=model, examples=kept["examples"])

    def _record(self) -> dict[str, Any] | None:
        """The kept record, checked against its model file; None when there is none. Raises ValueError, saying
        why, for one that is not as it was saved."""
        path = self.folder / RECORD_NAME
        if not os.path.lexists(path):
            return None
        try:
            saved = json.loads(read_bounded(path, RECORD))
            checksum = saved.pop("sha256")
            matches = checksum == file_checksum(self.folder / saved["model"], saved, what=MODEL)
        except OSError as exc:  # FileRefused among them: a folder, a FIFO, a file too large; a model gone
            raise ValueError(exc.strerror or str(exc)) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"its record is not a kept winner's ({exc})") from None
        if not matches:
            raise ValueError("its model or record changed since they were saved (their checksum differs)")
        return saved

    def _remove_others(self, keep: str) -> None:
        for entry in self.folder.iterdir():
            if entry.name not in (keep, RECORD_NAME) and entry.name.startswith("trial-"):
                try:
                    entry.unlink()
                except OSError:
                    pass  # a folder in a model's place, say: it is refused where it is named, never loaded


def _plain(value: Any) -> Any:
    """A NumPy number (a metric, a configuration value) as the Python number it holds; anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)
