"""The hooks' MLflow work: study, phase and trial runs as a study runs, and the study's artifacts at its end."""

from __future__ import annotations

import json
import time
from typing import Any

from hpsearch.engine.listener import StudyReport
from hpsearch.engine.summary import StudySummary
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.records import SharedState, decode_params
from hpsearch.storage.urls import register_secret_url
from hpsearch.tracking.client import TRIAL_KEY
from hpsearch.tracking.mending import Mending

__all__ = ["MlflowLogger"]

MAX_TAG = 6000  # characters of a tag's value kept (MLflow stores up to 8000)


class MlflowLogger(Mending):
    """Does the MLflow work of a study; runs inside the tracking process (and in `hpsearch sync`)."""

    # ---- the hooks' work ---------------------------------------------------------------------------------------

    def on_study_start(self, spec: StudySpec, state: SharedState, reopen: bool = True) -> None:
        """``reopen`` False: a look at a finished study (to mend its runs), which leaves its runs' status alone."""
        register_secret_url(state.url)
        self._state = state
        self._reopened = reopen
        self._phase_runs.clear()
        self._study_run = self._parent_run(spec.name, "study", None, {}, reopen=reopen)

    def on_phase_start(self, phase: PhaseSpec, info: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._phase_studies[phase.name] = info["study_name"]
        if self._study_run is None:
            self._study_run = self._parent_run(self.spec.name, "study", None, {})
        run_id = self._parent_run(f"{self.spec.name}/{phase.name}", "phase", self._study_run,
                                  {"hpsearch.phase": phase.name, "optuna.study": info["study_name"]})
        if run_id is None:
            return
        self._phase_runs[phase.name] = run_id
        # tags, not params: MLflow's params never change, and a phase's may (more n_trials extend it,
        # --force-new-phase gives it another Optuna study and grid); the phase run stays the phase's
        settings = {"sampler": phase.sampler, "max_retries": phase.max_retries, "optuna_study": info["study_name"]}
        if phase.n_trials:
            settings["n_trials"] = phase.n_trials
        if info.get("grid"):
            settings["grid"] = json.dumps(info["grid"])[:MAX_TAG]
            self._safe("logging the grid", lambda: self.client.log_dict(run_id, info["grid"], "grid.json"))
        tags = [RunTag(key, str(value)) for key, value in settings.items()]
        self._safe("logging the phase's settings", lambda: self.client.log_batch(run_id, tags=tags))

    def on_trial_start(self, phase: PhaseSpec, trial: Any, config: dict[str, Any], seed: int,
                       replaces: Any) -> None:
        optuna_study = self._phase_studies.get(phase.name, f"{self.spec.name}.{phase.name}")
        tags = self._trial_tags(phase.name, optuna_study, trial.number, trial.point, seed, "RUNNING")
        if replaces is not None:
            tags["hpsearch.replaces_trial"] = str(replaces.number)
            replaced = self._find_trial_run(f"{optuna_study}/{replaces.number}")
            if replaced is not None:
                tags["hpsearch.replaces_run_id"] = replaced
        found = self._safe("creating a trial run",
                           lambda: self._trial_run(tags[TRIAL_KEY], f"{phase.name}-{trial.number}", tags))
        if found is None or not found[1]:
            # one writer per run: a process mending the log created it from the stored trial (this process's
            # tracking was behind), and wrote it whole; logging here too would log every metric twice
            return
        run_id = found[0]
        self._trial_runs[trial.trial_id] = run_id
        self._pending_params[run_id] = self._params({**config, "seed": seed})
        self._last_flush[run_id] = time.monotonic()

    def on_epochs(self, trial_id: int, epochs: list[tuple[int, dict[str, Any]]]) -> None:
        for epoch, metrics in epochs:
            self._on_epoch(trial_id, epoch, metrics)
        run_id = self._trial_runs.get(trial_id)
        if run_id is not None:
            self._send(run_id)

    def _on_epoch(self, trial_id: int, epoch: int, metrics: dict[str, Any]) -> None:
        run_id = self._trial_runs.get(trial_id)
        if run_id is None:
            return
        losses = metrics.get("step_losses") or []
        first = int(metrics.get("iteration", len(losses))) - len(losses)
        for i, loss in enumerate(losses):
            self._metric(run_id, "loss", loss, first + i)
        if not losses:
            self._metric(run_id, "loss", metrics.get("loss"), epoch)
        for key, value in metrics.items():  # whatever else the trainable reports, by its own names
            if key not in ("loss", "step_losses", "iteration"):
                self._metric(run_id, key, value, epoch)

    def on_trial_end(self, phase: PhaseSpec, trial: Any, result: Any, reason: str | None,
                     progress: dict[str, Any]) -> None:
        run_id = self._trial_runs.pop(trial.trial_id, None)
        if run_id is not None:
            if result is not None:
                for name, value in result.metrics.items():
                    self._metric(run_id, f"final_{name}", value, 0)
                self._metric(run_id, "seconds", result.seconds, 0)
            if trial.traceback:
                self._safe("logging the traceback",
                           lambda: self.client.log_text(run_id, trial.traceback, "traceback.txt"))
            self._end_trial_run(run_id, trial.state, reason, getattr(result, "device", None))
        self._log_progress(phase, progress)

    def _log_progress(self, phase: PhaseSpec, progress: dict[str, Any]) -> None:
        phase_run = self._phase_runs.get(phase.name)
        if phase_run is not None:
            self._metric(phase_run, f"best_{self.spec.objective.metric}", progress.get("best_value"),
                         progress.get("done", 0))
            self._metric(phase_run, "trials_done", progress.get("done"), progress.get("done", 0))
            self._send(phase_run)
        if self._study_run is not None:
            self._study_steps += 1
            self._metric(self._study_run, f"best_{self.spec.objective.metric}", progress.get("study_best_value"),
                         self._study_steps)
            self._send(self._study_run)

    def on_trial_reaped(self, phase: PhaseSpec, trial: Any, reason: str) -> None:
        optuna_study = self._phase_studies.get(phase.name, f"{self.spec.name}.{phase.name}")
        run_id = self._find_trial_run(f"{optuna_study}/{trial.number}")
        if run_id:
            self._end_trial_run(run_id, "FAIL", reason)
            self._safe("ending a dead trial's run", lambda: self.client.set_terminated(run_id, status="KILLED"))
            return
        if phase.name not in self._phase_runs:
            return
        # the dead process never got its run to MLflow: record the trial here, as `sync` would
        row = {"phase": phase.name, "number": trial.number, "state": "FAIL", "value": None,
               "params": decode_params(trial.params), "point": trial.point, "seed": trial.seed, "failure": reason,
               "optuna_study": optuna_study, "epoch_history": None, "duration_seconds": None}
        self._safe("recording a dead trial", lambda: self._rebuild_trial_run(row, status="KILLED"))

    def on_phase_end(self, phase: PhaseSpec, status: dict[str, Any]) -> None:
        run_id = self._phase_runs.get(phase.name)
        if run_id is None:
            return
        for key in ("complete", "pruned", "failed"):
            self._metric(run_id, f"trials_{key}", status.get(key), status.get("done", 0))
        self._send(run_id, force=True)
        if self._reopened:  # as the study run: a clean end, the tag saying how far the phase got
            self._safe("ending a phase run", lambda: self.client.set_tag(run_id, "hpsearch.phase_state",
                                                                         status["state"]))
            self._safe("ending a phase run", lambda: self.client.set_terminated(run_id, status="FINISHED"))

    def on_study_end(self, summary: StudySummary, report: StudyReport | None) -> None:
        run_id = self._study_run
        if run_id is None:
            return
        self._send(run_id, force=True)
        if report is not None:
            self._log_study_artifacts(run_id, report)
        # a look at a finished study leaves its end time alone. A run that ends here ended cleanly (Ctrl-C never gets
        # here): FINISHED, and the tag says whether the study is complete or stopped until a rerun goes on with it
        state = "complete" if summary.complete else "stopped"
        if self._reopened:
            self._safe("ending the study run", lambda: self.client.set_tag(run_id, "hpsearch.study_state", state))
            self._safe("ending the study run", lambda: self.client.set_terminated(run_id, status="FINISHED"))
