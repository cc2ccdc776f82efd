"""Running one trial: train it with its hooks, store its end in one transaction, tell the listener and the console.

Knows the storage only through :class:`~hpsearch.storage.trialstore.TrialStore` and the phase only through its
:class:`~hpsearch.engine.phaseview.PhaseView`; :class:`~hpsearch.engine.phaserun.PhaseRunner` hands it the trials
it claimed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from hpsearch.backends import DivergedError, TrainableError, TrainResult
from hpsearch.backends.base import Training, add_epoch, device_name
from hpsearch.data import Dataset
from hpsearch.engine.interrupt import Interrupted, Interruption
from hpsearch.engine.listener import StudyListener, TrialInfo
from hpsearch.engine.pausedruns import PausedRun
from hpsearch.engine.phaseview import PhaseView
from hpsearch.engine.pointqueue import Heartbeat
from hpsearch.engine.training import resolved_config, start_training, train_once
from hpsearch.engine.winner import KeptWinner, Trial, rank_of
from hpsearch.errors import SpecError, UserError, format_traceback, one_line
from hpsearch.formatting import format_duration
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.records import (DEVICE, EXAMPLES, FAILURE, INTERRUPTED, LADDER_STOPPED, SEED, TRACEBACK,
                                      decode_params)
from hpsearch.storage.trialstore import Row, TrialStore
from hpsearch.storage.urls import mask_url

__all__ = ["RunningTrial", "TrialRunner"]

NO_METRIC = "the trainable reported no metric"


@dataclass
class RunningTrial:
    """The trial being run: its identity, what it trains with, and what it reports."""

    phase: PhaseSpec
    view: PhaseView
    info: TrialInfo
    optuna_trial: optuna.Trial | None = None  # only where Optuna must see it (TPE, pruning)
    paused: PausedRun | None = None  # a rung of halving: where its ladder's run is kept between levels
    history: dict[str, list[Any]] = field(default_factory=dict)
    traceback: str | None = None  # where the trainable failed, kept with the trial and its MLflow run


@dataclass
class TrialRunner:
    """Runs the trials a driver claims, on one storage, for one study."""

    spec: StudySpec
    store: TrialStore
    data: Callable[[], Dataset]  # loaded once, when the first trial needs it
    listener: StudyListener
    echo: Callable[[str], None]
    interruption: Interruption
    heartbeat: Heartbeat
    views: dict[str, PhaseView]  # every phase's view, for the study's best so far
    # a line per trial on echo; False where another process shows the study's progress (run --workers's parent)
    progress_lines: bool = True
    winner: KeptWinner | None = None  # where a trial that becomes the study's best keeps its model
    # the Optuna studies of the study's phases now (a kept winner of another is an earlier generation's)
    live_studies: Callable[[], set[str]] = set
    keeps_winners: bool = True  # False once a winner's model could not be kept (the time box keeps room for it)

    def describe(self, row: Row) -> TrialInfo:
        """A stored trial as the hooks see it (one read of the trial)."""
        trial = self.store.storage.get_trial(row.trial_id)
        return TrialInfo(row.trial_id, row.number, row.point, decode_params(trial.params), trial.user_attrs.get(SEED),
                         row.state, row.value, row.failure)

    def run(self, rungs: list[RunningTrial], study: optuna.Study) -> None:
        """Train the claimed trials and store each one's end: one trial, or the rungs of a budget ladder (ascending
        budget), trained once, each rung's state its own trial. A signal ends them as ``interrupted``; rungs a
        failure leaves untrained go back in the queue without using a retry."""
        stages = _Stages(self, rungs) if self._staged(rungs[0]) else None
        pending = list(rungs)
        untrained = LADDER_STOPPED
        with self.heartbeat.beating(*(current.info.trial_id for current in rungs)):
            try:
                while pending:
                    if not self._run_one(pending.pop(0), study, stages):
                        break  # the run cannot go on: the rungs above are trained another time
            except Interrupted:
                untrained = INTERRUPTED
                raise
            finally:
                for rest in pending:
                    try:
                        self._finish(rest, TrialState.FAIL, None, None, untrained, stages)
                    except Exception as exc:  # noqa: BLE001 - a storage that fails here: the reaper frees it later
                        self.echo(f"[{rest.phase.name}] trial {rest.info.number} stays RUNNING until it is reaped: "
                                  f"{one_line(exc)}")

    def _staged(self, first: RunningTrial) -> bool:
        """Whether the trials train through the trainable's ``start``: always in a phase with a budget; elsewhere
        when the trainable can and the configuration names its budget, so that a trial that ends early still says
        what it cost."""
        trainable = self.spec.trainable
        if first.phase.budget is not None:
            return True
        if trainable.start is None or trainable.budget is None:
            return False
        try:
            return trainable.budget in resolved_config(self.spec, first.info.params)
        except UserError:
            return False  # the trial fails on its own configuration, with its own message

    def _run_one(self, current: RunningTrial, study: optuna.Study, stages: _Stages | None) -> bool:
        """Train one trial (alone, or as the next rung of ``stages``) and store its end; False when the trainable
        failed or the result was discarded, so that the rungs above must not train on from it."""
        phase, info = current.phase, current.info
        pruning = self.spec.pruner.type != "none"
        if pruning and current.optuna_trial is None:
            current.optuna_trial = optuna.Trial(study, info.trial_id)
        reason: str | None = None
        result = None
        silent = False  # the trainable finished without reporting the objective
        go_on = True
        try:
            config = resolved_config(self.spec, info.params)
            replaced = current.view.replaced(info.point, info.number)
            self.listener.on_trial_start(phase, info, config, info.seed,
                                         self.describe(replaced) if replaced else None)
            on_epoch = functools.partial(self._on_epoch, current, pruning)
            with self.interruption.immediate():
                if stages is None:
                    result = train_once(self.spec, self.data(), info.params, seed=info.seed, on_epoch=on_epoch)
                else:
                    result = stages.train(config, on_epoch)
            state, value, reason = self._judge(result)
            silent = reason is not None and reason.startswith(NO_METRIC)
        except optuna.TrialPruned as exc:
            state, value, reason = TrialState.PRUNED, None, str(exc) or "pruned"
        except DivergedError as exc:  # the rungs above replay the run up to here and diverge alike
            state, value, reason = TrialState.PRUNED, None, f"diverged: {exc}"
        except KeyboardInterrupt:
            if self._finish(current, TrialState.FAIL, None, None, INTERRUPTED, stages):
                self.interruption.stopped.append(f"trial {info.number} of phase {phase.name!r}")
            raise Interrupted(self.interruption.signal or "SIGINT") from None
        except UserError as exc:  # a spec that cannot train at all (a batch larger than the data, no data)
            self._finish(current, TrialState.FAIL, None, None, str(exc), stages)
            raise  # the study stops with one line, exit 2
        except (Exception, SystemExit) as exc:  # the trainable failed: the trial fails, its point is retried
            state, value, reason = TrialState.FAIL, None, one_line(exc)
            current.traceback = format_traceback(exc)
            go_on = False
        kept = self._keep_if_best(current, value, result) if state == TrialState.COMPLETE else None
        # (kept before its end is stored: the study's end may come next)
        if stages is not None:
            stages.pruned = state == TrialState.PRUNED  # the last rung's: a ladder without a value goes no further
            if current.info is stages.top and state != TrialState.FAIL:
                # before the last rung's end is stored: whoever promotes the ladder on that end finds its run saved
                stages.pause()
        stored = self._finish(current, state, value, result, reason, stages)
        if kept is not None and not stored:  # its point goes to another worker: this trial never ends COMPLETE
            self.winner.withdraw(kept)
        if state == TrialState.FAIL and silent:  # the trainable does not report the objective: no trial ever will
            raise SpecError(f"{self.spec.source}: {reason}; set objective.metric to one of the metrics it reports.")
        return go_on and stored

    def _keep_if_best(self, current: RunningTrial, value: float, result: TrainResult) -> Trial | None:
        """Keep the trial's model and training result when it ranks before the study's best so far, so that the
        study's end need not train it again (see :mod:`hpsearch.engine.winner`); the trial, when kept."""
        if self.winner is None or not self.winner.can_keep:
            return None
        maximize = self.spec.objective.direction == "maximize"
        order = {phase.name: index for index, phase in enumerate(self.spec.phases)}

        def rank(phase: str, value: float, number: int) -> tuple[float, int, int]:
            return rank_of(value, maximize, order.get(phase, len(order)), number)

        mine = rank(current.phase.name, value, current.info.number)
        for name, view in self.views.items():
            best = view.best()
            if best is not None and rank(name, best.value, best.number) < mine:
                return None  # a better trial is known: the process that trained it kept it
        trial = Trial.of(current.info.trial_id, current.view.record["study"], current.info.params, current.info.seed)
        try:
            if result.model is None:
                raise TrainableError(f"the trainable {self.spec.trainable.name} returned no model")
            return trial if self.winner.offer(trial, mine, result, self.live_studies()) else None
        except Exception as exc:  # noqa: BLE001 - a user's save_model, a full disk: the end trains it again
            if self.keeps_winners:
                self.keeps_winners = False
                self.echo(f"a winner's model is not kept, so the study's end trains the winner again (told once): "
                          f"{one_line(exc)}")
            return None

    def _judge(self, result: TrainResult) -> tuple[TrialState, float | None, str | None]:
        """A finished training's end: COMPLETE with the objective, PRUNED when it is not finite, FAIL without it."""
        metric = self.spec.objective.metric
        value = result.metrics.get(metric)
        if value is None:
            reported = ", ".join(result.metrics) or "none"
            return TrialState.FAIL, None, f"{NO_METRIC} {metric!r} (it reported: {reported})"
        if not math.isfinite(value):
            return TrialState.PRUNED, None, f"diverged: {metric} is {value}"
        return TrialState.COMPLETE, value, None

    def _on_epoch(self, current: RunningTrial, pruning: bool, epoch: int, metrics: dict[str, Any]) -> None:
        with self.interruption.deferred():  # storage and listener calls: a signal waits for the epoch's end
            add_epoch(current.history, metrics)  # a pruned or failed trial's curve too, so tracking can be rebuilt
            self.listener.on_epoch(current.phase, current.info, epoch, metrics)
            # each report is a storage write: only a pruner needs them (the history is stored at the end)
            if pruning:
                metric = self.spec.objective.metric
                if metric not in metrics:
                    raise TrainableError(f"on_epoch got no {metric!r}, which the pruner needs (it got: "
                                         f"{', '.join(metrics) or 'nothing'})")
                current.optuna_trial.report(float(metrics[metric]), epoch)
                if current.optuna_trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    def _finish(self, current: RunningTrial, state: TrialState, value: float | None, result: Any,
                reason: str | None, stages: _Stages | None = None) -> bool:
        """Store the trial's end in one transaction, then tell the view, the listener and the console; False when
        the trial was already failed by a reaper, and nothing was stored."""
        phase, info = current.phase, current.info
        attrs: dict[str, Any] = {}
        if current.history:
            attrs["epoch_history"] = current.history
        if result is not None:
            attrs.update(metrics=result.metrics, seconds=round(result.seconds, 3))
            if result.loss_history:
                attrs["final_loss"] = result.loss
        examples = stages.spent() if stages is not None else getattr(result, "examples", None)
        if examples is not None:
            attrs[EXAMPLES] = examples
        if getattr(result, "device", None):
            # cuda:0 of a worker given GPU 2 is cuda:2, in the storage and for the listeners alike
            result.device = attrs[DEVICE] = device_name(str(result.device))[:100]
        if reason:
            attrs[FAILURE] = mask_url(reason)
        if current.traceback:
            attrs[TRACEBACK] = mask_url(current.traceback)
        if not self.store.finish(info.trial_id, state, value, attrs):
            self.echo(f"[{phase.name}] trial {info.number}: result discarded, the trial was already failed "
                      "(its point was handed to another worker)")
            return False
        running = current.view.rows[info.trial_id]
        row = Row(info.trial_id, info.number, state.name, value, running.start, self.store.now(), info.point,
                  attrs.get(FAILURE), examples=attrs.get(EXAMPLES))
        current.view.apply(row)
        status = current.view.status()
        best = [v.best() for v in self.views.values()]
        best = [b.value for b in best if b is not None]
        pick = max if self.spec.objective.direction == "maximize" else min
        progress = {**status, "study_best_value": pick(best) if best else None}
        finished = TrialInfo(info.trial_id, info.number, info.point, info.params, info.seed, state.name, value,
                             attrs.get(FAILURE), attrs.get(TRACEBACK))
        self.listener.on_trial_end(phase, finished, result, reason, progress)
        self._report_trial(phase, current.view, row, status, attrs.get(DEVICE))
        return True

    def _report_trial(self, phase: PhaseSpec, view: PhaseView, row: Row, status: dict[str, Any],
                      device: str | None = None) -> None:
        if not self.progress_lines:
            return
        if row.state == "COMPLETE":
            score = f"{self.spec.objective.metric} {row.value:.4f}"
        else:
            score = row.state + (f" ({row.failure})" if row.failure else "")
        best = f"best {status['best_value']:.4f}" if status["best_value"] is not None else "best -"
        done, total = status["done"], status["total"]
        eta = view.eta_seconds()
        eta = f", ETA {format_duration(eta)}" if eta is not None else ""
        on = f" on {device}" if device and device != "cpu" else ""  # which GPU, where workers have one each
        self.echo(f"[{phase.name}] {done}/{total} trial {row.number}{on} {score}, {best}{eta}")


class _Stages:
    """The run of a ladder's rungs (or of one trial) along the trainable's budget: started once, for the top rung,
    and advanced rung by rung. Each rung sees every epoch report of the run so far, as the point trained alone
    would; a rung above one that diverged sees them too, then diverges alike.
    """

    unsaved_told = False  # whether this process said that a run could not be saved between levels

    def __init__(self, runner: TrialRunner, rungs: list[RunningTrial]) -> None:
        self.spec, self.data, self.echo = runner.spec, runner.data, runner.echo
        self.budget = rungs[0].phase.budget or runner.spec.trainable.budget
        self.top = rungs[-1].info
        self.paused = rungs[-1].paused
        self.training: Training | None = None
        self.epochs: list[tuple[int, dict[str, Any]]] = []  # the run's epoch reports so far
        self.history: dict[str, list[float]] = {}  # their numbers, by metric name
        self.diverged: DivergedError | None = None
        self.pruned = False  # whether the last rung trained ended PRUNED (by the pruner, or diverged)
        self.counted = 0  # training examples already put on a trial's account

    def train(self, config: dict[str, Any], on_epoch: Callable[[int, dict[str, Any]], None]) -> TrainResult:
        if self.training is None:
            self.training = self._resumed(config[self.budget]) or start_training(
                self.spec, self.data(), self.paused.params if self.paused else self.top.params, seed=self.top.seed)
        for epoch, metrics in self.epochs:  # the point trained alone reports these too (and may be pruned here)
            on_epoch(epoch, metrics)
        if self.diverged is not None:
            raise self.diverged

        def record(epoch: int, metrics: dict[str, Any]) -> None:
            self.epochs.append((epoch, metrics))
            on_epoch(epoch, metrics)

        try:
            return self.spec.trainable.advance(self.training, config[self.budget], config=config,
                                               history=self.history, on_epoch=record)
        except DivergedError as exc:
            self.diverged = exc
            raise

    def _resumed(self, budget: int) -> Training | None:
        """The ladder's run where the last level saved it (with its epoch reports), if it is there and not past
        ``budget``; None to train from the start."""
        if self.paused is None:
            return None
        try:
            saved = self.paused.reports()
            if saved is None:
                return None
            training = start_training(self.spec, self.data(), self.paused.params, seed=self.top.seed,
                                      resume_from=self.paused.path)
            stood, epochs = saved
            if training.budget != stood or training.budget > budget:
                raise ValueError(f"it stands at {training.budget}, its reports at {stood}")
        except Exception as exc:  # noqa: BLE001 - a user's restore too: the run trains from its start instead
            self.echo(f"the saved run at {self.paused.path} is not taken up ({one_line(exc)}); it trains from the "
                      "start")
            self.paused.forget()
            return None
        self.epochs = epochs
        for _, metrics in self.epochs:
            add_epoch(self.history, metrics)
        self.counted = training.examples or 0  # trained and counted at the levels below
        return training

    def pause(self) -> None:
        """After the last claimed rung trained, before its end is stored: keep the run for the ladder's next level,
        or let it go after its top or a last rung that ended PRUNED (without a value, halving never promotes it). A
        run that cannot be saved trains again from its start at the next level (same numbers, more compute)."""
        if self.paused is None or self.training is None:
            return
        if self.paused.top or self.diverged is not None or self.pruned:
            self.paused.forget()
            return
        try:
            self.paused.save(self.training, self.epochs)
        except Exception as exc:  # noqa: BLE001 - a user's save, a full disk: the next level trains from the start
            if not _Stages.unsaved_told:
                _Stages.unsaved_told = True
                self.echo(f"a ladder's run is not kept for its next level, which trains it again from its start "
                          f"(told once): {one_line(exc)}")
            self.paused.forget()

    def spent(self) -> int | None:
        """Training examples the run processed since the last account: what this trial cost (a rung: the run from
        where it stood, the rung below or the start)."""
        examples = getattr(self.training, "examples", None)  # a user's Training may not count them
        if examples is None:
            return None
        spent, self.counted = examples - self.counted, examples
        return spent
