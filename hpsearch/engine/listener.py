"""What the driver tells the world as a study runs: the hooks tracking implements, and the data reports are made of.

Plain data only: nothing here imports Optuna, so tracking and reports depend on this module, never on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpsearch.engine.summary import StudySummary

__all__ = ["StudyListener", "StudyReport", "TrialInfo"]


@dataclass(frozen=True)
class TrialInfo:
    """One trial as the hooks see it. ``trial_id`` is the storage's id, ``number`` the trial's number in its phase."""

    trial_id: int
    number: int
    point: int | None
    params: dict[str, Any]
    seed: int | None = None
    state: str = "RUNNING"  # an Optuna TrialState name
    value: float | None = None
    failure: str | None = None
    traceback: str | None = None  # where the trainable raised, when it did


class StudyListener:
    """Hooks the driver calls as a study runs; tracking implements them. Every method is optional.

    ``progress`` is the phase's status (see :meth:`hpsearch.engine.phaseview.PhaseView.status`) plus ``study_best_value``.
    """

    wants_report = False  # True: on_study_end gets the full report (every trial, importances) for its plots

    @property
    def wants_trials(self) -> bool:
        """Whether this listener has an :meth:`on_existing_trials` of its own: only then are the stored trials read
        in full for it, at a run's start and end."""
        return type(self).on_existing_trials is not StudyListener.on_existing_trials

    def on_study_start(self, spec: Any, state: Any, reopen: bool = True) -> None:
        """``reopen`` is False when the study is already complete and the run only mends its record."""

    def on_phase_start(self, phase: Any, info: dict[str, Any]) -> None: ...

    def on_trial_start(self, phase: Any, trial: TrialInfo, config: dict[str, Any], seed: int,
                       replaces: TrialInfo | None) -> None: ...

    def on_epoch(self, phase: Any, trial: TrialInfo, epoch: int, metrics: dict[str, Any]) -> None: ...

    def on_trial_end(self, phase: Any, trial: TrialInfo, result: Any, reason: str | None,
                     progress: dict[str, Any]) -> None: ...

    def on_trial_reaped(self, phase: Any, trial: TrialInfo, reason: str) -> None: ...

    def on_existing_trials(self, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]]) -> None:
        """At a run's start and end: every trial stored (rows of ``Driver.trials``), per phase its study; to mend a log
        of them. Read only for a listener that defines it (see :attr:`wants_trials`)."""

    def on_phase_end(self, phase: Any, status: dict[str, Any]) -> None: ...

    def on_study_end(self, summary: StudySummary, report: StudyReport | None) -> None: ...

    def close(self, timeout: float = 60.0, *, quiet: bool = False) -> None:
        """Finish whatever is pending, within ``timeout`` seconds; called however the run ends. ``quiet``: what is
        left is not worth a message (an interrupted run: the next run mends it)."""


@dataclass
class StudyReport:
    """Everything the plots and summaries of a finished study need, as plain data.

    trials: rows of ``Driver.trials``. spaces: per phase, the searched parameters and whether each is on a log
    scale. importances: per phase, parameter importances (empty where they cannot be computed). best: see
    ``Driver.best``. best_result: the best trial's training result (histories and model): its kept model, or the trial
    trained again with its own seed.
    """

    study: str
    metric: str
    direction: str
    trials: list[dict[str, Any]]
    spaces: dict[str, dict[str, bool]]
    importances: dict[str, dict[str, float]]
    best: dict[str, Any] | None
    best_result: Any
    best_fragment: dict[str, Any] | None
    summary: StudySummary
    failure: str | None = None  # why the winner has no retrained result or test score (the user's code failed)
    trained_again: str | None = None  # why best_result is the winner trained again, not its kept model
