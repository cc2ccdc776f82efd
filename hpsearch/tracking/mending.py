"""Mending MLflow from the study storage, the source of truth: `hpsearch sync`, and every run's start and end."""

from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from hpsearch.backends.base import scores_on_test
from hpsearch.errors import one_line

from hpsearch.engine.listener import StudyReport
from hpsearch.engine.training import resolved_config
from hpsearch.storage.records import SharedState
from hpsearch.storage.urls import mask_url
from hpsearch.tracking.client import STUDY_ID, TRIAL_KEY, MlflowBase, TrackingError, _now_ms, _run_status

__all__ = ["Mending"]


class Mending(MlflowBase):
    """Creates the runs MLflow is missing and ends the runs it left RUNNING."""

    def sync(self, state: SharedState, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]],
             report: Callable[[], StudyReport | None] | None) -> dict[str, int]:
        """Create the runs MLflow is missing and end the runs it left RUNNING, from the Optuna storage's rows.

        ``report``: for a complete study, what makes its report (the winner retrained for its curves and model),
        called only when the study's run lacks the report's artifacts. Raises whatever MLflow raises: unlike a
        study, a sync exists to talk to MLflow.
        """
        self._state = state
        self._reported = False
        client = self.client
        # a run made here starts with its first trial, as it would have live: MLflow's UI, oldest first, then shows
        # it before its phases and trials (see hpsearch.cli.output.RUNS_TABLE)
        study_run = state.get_or_create(self._key(self.spec.name), lambda: self._create_run(
            self.spec.name, self._study_tags(), _first_start(trials)))
        self._study_run = study_run
        counts = self._reconcile(trials, phases)
        if report is not None:
            if "best_config.yaml" not in {a.path for a in client.list_artifacts(study_run)}:
                made = report()
                if made is not None and made.best is not None:
                    self._log_study_artifacts(study_run, made)
            for run_id in (study_run, *self._phase_runs.values()):
                if client.get_run(run_id).info.status != "FINISHED":  # what is already right keeps its end time
                    client.set_terminated(run_id, status="FINISHED")
                    counts["ended"] += 1
        if self._reported:
            raise TrackingError(f"MLflow at {mask_url(self.uri)} failed during the sync; run it again when it is up.")
        return counts

    def on_existing_trials(self, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]]) -> None:
        """At the start of a run: mend what an earlier process could not log (it was killed, or MLflow was down)."""
        if self._study_run is not None:
            self._safe("mending earlier trials' runs", lambda: self._reconcile(trials, phases))

    def _reconcile(self, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]]) -> dict[str, int]:
        client = self.client
        experiment = self._experiment()
        for name, info in phases.items():
            if name not in self._phase_runs:
                self._phase_runs[name] = self._state.get_or_create(
                    self._key(f"{self.spec.name}/{name}"),
                    lambda name=name, info=info: self._create_run(f"{self.spec.name}/{name}", {
                        "hpsearch.kind": "phase", "hpsearch.study": self.spec.name, STUDY_ID: self._study_id,
                        "hpsearch.phase": name,
                        "optuna.study": info["study_name"], "mlflow.parentRunId": self._study_run},
                        _first_start([row for row in trials if row["phase"] == name])))
        # this study's trial runs, whichever URL logged them: a study of the same name in another storage, logged to
        # the same experiment, has trial runs with the same keys and another study id (runs logged before the id was
        # tagged are matched by their key alone)
        existing: dict[str, Any] = {}
        token = None
        while True:
            page = client.search_runs([experiment], filter_string="tags.`hpsearch.kind` = 'trial'",
                                      max_results=1000, page_token=token)
            for run in page:
                if run.data.tags.get(STUDY_ID, self._study_id) == self._study_id:
                    existing[run.data.tags.get(TRIAL_KEY, "")] = run
            token = page.token
            if not token:
                break
        created = ended = 0
        for row in trials:
            key = f"{row['optuna_study']}/{row['number']}"
            run = existing.get(key)
            if row["state"] in ("RUNNING", "WAITING") or row["phase"] not in self._phase_runs:
                continue  # a live trial logs itself
            if run is None:
                created += self._rebuild_trial_run(row)
            elif run.info.status == "RUNNING":
                self._end_trial_run(run.info.run_id, row["state"], row.get("failure"), row.get("device"))
                ended += 1
        return {"created": created, "ended": ended}

    def _rebuild_trial_run(self, row: dict[str, Any], status: str | None = None) -> bool:
        """Create the run of a stored trial that MLflow is missing; False when it has one after all."""
        phase = row["phase"]
        tags = {**self._trial_tags(phase, row["optuna_study"], row["number"], row.get("point"), row["seed"],
                                   row["state"]), "hpsearch.synced": "true"}
        if row.get("failure"):
            tags["failure"] = mask_url(str(row["failure"]))[:5000]
        if row.get("device"):
            tags["device"] = row["device"]
        start_ms = end_ms = _start_ms(row)  # the trial's own times, as its worker would have logged them
        if start_ms is not None:
            end_ms = start_ms + int((row.get("duration_seconds") or 0) * 1000)
        run_id, created = self._trial_run(tags[TRIAL_KEY], f"{phase}-{row['number']}", tags, start_ms)
        if not created:
            return False  # its worker created it meanwhile and logs it
        history = row.get("epoch_history") or {}
        iterations = history.get("iteration") or []
        for key, values in history.items():
            for epoch, value in enumerate(values or []):
                if key == "loss":  # only the epoch's mean loss survives in the storage: at the epoch's last iteration
                    self._metric(run_id, key, value, iterations[epoch] if epoch < len(iterations) else epoch)
                elif key != "iteration":
                    self._metric(run_id, key, value, epoch)
        if row["state"] == "COMPLETE":
            self._metric(run_id, f"final_{self.spec.objective.metric}", row["value"], 0)
        if row.get("duration_seconds") is not None:
            self._metric(run_id, "seconds", row["duration_seconds"], 0)
        config = resolved_config(self.spec, row["params"])
        self._pending_params[run_id] = self._params({**config, "seed": row["seed"]})
        self._send(run_id, force=True)
        self.client.set_terminated(run_id, status=status or _run_status(row["state"], row.get("failure")),
                                   end_time=end_ms)
        return True

    def _saved_model(self, report: StudyReport, folder: Path) -> Path | None:
        """The winner's model saved by the trainable into ``folder``; None when it keeps none or saving failed (the
        user's code: a warning, and the rest of the study's record is still logged)."""
        trainable, result = self.spec.trainable, report.best_result
        if trainable.save_model is None or result is None or result.model is None:
            return None
        model_file = folder / f"best_model{trainable.model_suffix or ''}"
        try:
            trainable.save_model(result.model, result.config, model_file)
        except Exception as exc:  # noqa: BLE001 - whatever the user's save_model raises
            self.echo(f"warning: the trainable {self.spec.model.backend} could not save the winner's model "
                      f"({one_line(exc)}); the study run has no model.")
            return None
        return model_file

    def _log_study_artifacts(self, run_id: str, report: StudyReport) -> None:
        from mlflow.entities import Metric, RunTag

        from hpsearch.report import write_report

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "report"
            write_report(report, folder)
            self._safe("logging the plots", lambda: self.client.log_artifacts(run_id, str(folder)))
            best = report.best
            if best is None:
                return
            model_file = self._saved_model(report, Path(tmp))
            if model_file is not None:
                self._safe("logging the best model",
                           lambda: self.client.log_artifact(run_id, str(model_file), "model"))
            final = f"best_{self.spec.objective.metric}_final"
            metrics = [Metric(final, best["value"], _now_ms(), 0)]
            metrics += [Metric(key, value, _now_ms(), 0) for key, value in scores_on_test(best).items()]
            tags = [RunTag("best_phase", best["phase"]), RunTag("best_trial", str(best["trial"])),
                    RunTag("best_config", json.dumps(best["config"])[:5000])]
            self._safe("logging the result", lambda: self.client.log_batch(run_id, metrics=metrics, tags=tags))
        for phase_name, phase_run in self._phase_runs.items():
            status = report.summary.phase(phase_name)
            if status and status.get("best_value") is not None:
                self._safe("logging a phase result", lambda phase_run=phase_run, status=status:
                           self.client.log_batch(phase_run,
                                                 metrics=[Metric(final, status["best_value"], _now_ms(), 0)]))


def _start_ms(row: dict[str, Any]) -> int | None:
    """A stored trial's start in MLflow's milliseconds (Optuna keeps it as naive UTC); None before it started."""
    if not row.get("datetime_start"):
        return None
    started = datetime.datetime.fromisoformat(row["datetime_start"]).replace(tzinfo=datetime.timezone.utc)
    return int(started.timestamp() * 1000)


def _first_start(rows: list[dict[str, Any]]) -> int | None:
    """The earliest start among ``rows``; None when none has started (the run then starts now)."""
    return min((ms for ms in map(_start_ms, rows) if ms is not None), default=None)
