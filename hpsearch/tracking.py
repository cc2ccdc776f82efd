"""MLflow tracking: the only module that talks to MLflow.

One study run per study, one phase run nested under it per phase, one trial run nested under its phase per Optuna
trial, created when the trial starts. Parent run ids live in the study storage (through the driver's
``SharedState``), so a resumed run or another worker attaches to the same parents.

MLflow being down or slow never stops a study: the first failure is reported once, tracking pauses for a minute and
then tries again; what was missed is rebuilt from the Optuna storage, the source of truth, by ``hpsearch sync``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from hpsearch.listener import StudyListener, StudyReport, TrialInfo
from hpsearch.records import INTERRUPTED, REAPED, SharedState, decode_params
from hpsearch.errors import UserError
from hpsearch.spec import PhaseSpec, StudySpec
from hpsearch.storage import mask_url, sqlite_path, storage_lock
from hpsearch.training import resolved_config

__all__ = ["MlflowLogger", "MlflowTracker", "TrackingError", "resolve_tracking_uri"]

# A dead server must cost seconds, not MLflow's default minutes of retries; users can still override both.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow 3 records usage telemetry around every client call: time the tracking process needs for the study's runs
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TRIAL_KEY = "hpsearch.trial_key"
FLUSH_SECONDS = 2.0  # metrics of a running trial reach MLflow at least this often
RETRY_SECONDS = 60.0  # after a failure, how long tracking pauses before trying MLflow again
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# MLflow 3's UI opens an experiment of this kind on its runs, not on the GenAI overview (traces)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(UserError):
    """MLflow could not be reached when reaching it was the point (``hpsearch sync``)."""


def resolve_tracking_uri(spec: StudySpec, storage_url: str, cli_uri: str | None = None) -> str | None:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the spec's, else ``sqlite:///`` beside the storage.

    None when the spec turns tracking off.
    """
    if not spec.tracking.enabled:
        return None
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or spec.tracking.uri
    if uri:
        return uri
    database = sqlite_path(storage_url)
    folder = database.parent if database is not None else Path("runs")
    return f"sqlite:///{folder / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go in ``mlartifacts/`` beside it, whatever the working directory."""
    database = sqlite_path(uri)
    return (database.parent.resolve() / "mlartifacts").as_uri() if database is not None else None


def _run_status(state: str, reason: str | None) -> str:
    """MLflow's status for an Optuna trial state: KILLED when its process was stopped rather than the trial failing."""
    if reason in REAPED or reason == INTERRUPTED:
        return "KILLED"
    return STATUS.get(state, "FAILED")


def _write_ahead_log(database: Path) -> None:
    """A local MLflow store in SQLite's write-ahead-log mode: each commit syncs once instead of three times, which
    halves what MLflow costs per trial; readers (`mlflow ui`) never wait for the writer. The mode stays with the file."""
    import sqlite3

    with contextlib.suppress(sqlite3.Error):
        connection = sqlite3.connect(database, timeout=60)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()


def _echo_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowLogger:
    """Does the MLflow work of a study; runs inside the tracking process (and in `hpsearch sync`)."""

    def __init__(self, spec: StudySpec, uri: str, echo: Callable[[str], None] = _echo_err) -> None:
        self.spec = spec
        self.uri = uri
        self.echo = echo
        self.experiment = spec.tracking.experiment or spec.name
        self.seconds = 0.0  # time spent in MLflow calls, for the overhead figure
        self._lock_depth = 0
        self._client: Any = None
        self._experiment_id: str | None = None
        self._state: SharedState | None = None
        self._down_until = 0.0
        self._reported = False
        self._phase_runs: dict[str, str] = {}
        self._phase_studies: dict[str, str] = {}  # phase -> the Optuna study serving it
        self._study_run: str | None = None
        self._trial_runs: dict[int, str] = {}  # Optuna trial id -> run id
        self._pending: dict[str, list[Any]] = {}  # run id -> metrics not yet sent
        self._pending_params: dict[str, list[Any]] = {}
        self._last_flush: dict[str, float] = {}
        self._study_steps = 0
        self._reopened = True

    # ---- plumbing --------------------------------------------------------------------------------------------

    def _safe(self, what: str, call: Callable[[], Any]) -> Any:
        """Run one MLflow call; a failure is reported once per process and pauses tracking, never raised."""
        if time.monotonic() < self._down_until:
            return None
        start = time.perf_counter()
        try:
            with self._write_lock():
                return call()
        except Exception as exc:  # noqa: BLE001 - any MLflow or network error means "tracking unavailable"
            self._failed(what, exc)
            return None
        finally:
            self.seconds += time.perf_counter() - start

    @contextlib.contextmanager
    def _write_lock(self) -> Any:
        """Local workers share a SQLite MLflow store: one writer at a time, so none meets "database is locked".

        Re-entrant: a call that makes further calls holds the lock once.
        """
        if sqlite_path(self.uri) is None or self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with storage_lock(self.uri, "mlflow-write"):
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1

    def _failed(self, what: str, exc: Exception) -> None:
        self._down_until = time.monotonic() + RETRY_SECONDS
        if not self._reported:
            self._reported = True
            reason = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.echo(f"tracking: MLflow at {mask_url(self.uri)} failed while {what} ({reason[:200]}); the study "
                      f"continues, and `hpsearch sync {self.spec.source}` fills MLflow in afterwards")

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            # failures are reported once, in one line, by _failed; MLflow's own tracebacks would only repeat them
            logging.getLogger("mlflow").setLevel(logging.CRITICAL)
            logging.getLogger("alembic").setLevel(logging.WARNING)

            database = sqlite_path(self.uri)
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
                _write_ahead_log(database)
            # MLflow keeps one store per URI: a relative path must not mean another folder's database later
            uri = f"sqlite:///{database.resolve()}" if database is not None else self.uri
            self._client = MlflowClient(tracking_uri=uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            # workers starting together on a fresh MLflow database would race creating its tables
            lock = storage_lock(self._state.url, "mlflow-init") if self._state else contextlib.nullcontext()
            with lock:
                self._find_or_create_experiment()
        return self._experiment_id

    def _find_or_create_experiment(self) -> None:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=_artifact_location(self.uri), tags=EXPERIMENT_TAGS)
                    return
                except Exception:  # another worker created it first
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            self._experiment_id = found.experiment_id
            for key, value in EXPERIMENT_TAGS.items():
                if found.tags.get(key) != value:
                    self.client.set_experiment_tag(found.experiment_id, key, value)

    def _key(self, name: str) -> str:
        """Names of shared parent ids; they belong to one tracking server and experiment."""
        where = hashlib.sha1(f"{self.uri}|{self.experiment}".encode()).hexdigest()[:10]
        return f"mlflow:{where}:{name}"

    def _create_run(self, name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self._experiment(), run_name=name, tags=tags)
        return run.info.run_id

    def _parent_run(self, name: str, kind: str, parent: str | None, extra: dict[str, str],
                    reopen: bool = True) -> str | None:
        state = self._state

        def create() -> str:
            tags = {"hpsearch.kind": kind, "hpsearch.study": self.spec.name, **extra}
            if parent:
                tags["mlflow.parentRunId"] = parent
            return self._create_run(name, tags)

        run_id = self._safe(f"creating the {kind} run", lambda: state.get_or_create(self._key(name), create))
        if run_id and reopen:
            self._safe("reopening a run", lambda: self.client.update_run(run_id, status="RUNNING"))
        return run_id

    def _send(self, run_id: str, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_flush.get(run_id, 0.0) < FLUSH_SECONDS:
            return
        metrics = self._pending.pop(run_id, [])
        params = self._pending_params.pop(run_id, [])
        self._last_flush[run_id] = time.monotonic()
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            chunk = metrics[start:start + 1000]
            if not chunk and not params:
                break
            self._safe("logging metrics",
                        lambda chunk=chunk: self.client.log_batch(run_id, metrics=chunk, params=params))
            params = []

    def _metric(self, run_id: str, key: str, value: Any, step: int) -> None:
        from mlflow.entities import Metric

        if value is None:
            return
        self._pending.setdefault(run_id, []).append(Metric(key, float(value), _now_ms(), int(step)))

    @staticmethod
    def _params(config: dict[str, Any]) -> list[Any]:
        from mlflow.entities import Param

        return [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in sorted(config.items())]

    # ---- the hooks' work ---------------------------------------------------------------------------------------

    def on_study_start(self, spec: StudySpec, state: SharedState, reopen: bool = True) -> None:
        """``reopen`` False: a look at a finished study (to mend its runs), which leaves its runs' status alone."""
        self._state = state
        self._reopened = reopen
        self._phase_runs.clear()
        self._study_run = self._parent_run(spec.name, "study", None, {}, reopen=reopen)

    def on_phase_start(self, phase: PhaseSpec, info: dict[str, Any]) -> None:
        self._phase_studies[phase.name] = info["study_name"]
        if self._study_run is None:
            self._study_run = self._parent_run(self.spec.name, "study", None, {})
        run_id = self._parent_run(f"{self.spec.name}/{phase.name}", "phase", self._study_run,
                                  {"hpsearch.phase": phase.name, "optuna.study": info["study_name"]})
        if run_id is None:
            return
        self._phase_runs[phase.name] = run_id
        params = {"sampler": phase.sampler, "max_retries": phase.max_retries, "optuna_study": info["study_name"]}
        if phase.n_trials:
            params["n_trials"] = phase.n_trials
        if info.get("grid"):
            params["grid"] = json.dumps(info["grid"])[:6000]
            self._safe("logging the grid", lambda: self.client.log_dict(run_id, info["grid"], "grid.json"))
        self._safe("logging phase params", lambda: self.client.log_batch(run_id, params=self._params(params)))

    def on_trial_start(self, phase: PhaseSpec, trial: Any, config: dict[str, Any], seed: int,
                       replaces: Any) -> None:
        optuna_study = self._phase_studies.get(phase.name, f"{self.spec.name}.{phase.name}")
        tags = {
            TRIAL_KEY: f"{optuna_study}/{trial.number}",
            "hpsearch.kind": "trial", "phase": phase.name, "trial_number": str(trial.number),
            "optuna_study": optuna_study, "grid_point": "" if trial.point is None else str(trial.point),
            "seed": str(seed), "backend": self.spec.model.backend, "state": "RUNNING",
        }
        if phase.name in self._phase_runs:
            tags["mlflow.parentRunId"] = self._phase_runs[phase.name]
        if replaces is not None:
            tags["hpsearch.replaces_trial"] = str(replaces.number)
            replaced = self._find_trial_run(f"{optuna_study}/{replaces.number}")
            if replaced is not None:
                tags["hpsearch.replaces_run_id"] = replaced
        run_id = self._safe("creating a trial run",
                            lambda: self._trial_run(tags[TRIAL_KEY], f"{phase.name}-{trial.number}", tags)[0])
        if run_id is None:
            return
        self._trial_runs[trial.trial_id] = run_id
        self._pending_params[run_id] = self._params({**config, "seed": seed})
        self._last_flush[run_id] = time.monotonic()

    def _trial_run(self, key: str, name: str, tags: dict[str, str]) -> tuple[str, bool]:
        """The run of trial ``key``, created once among all processes (its id is kept in the study storage):
        the trial's own worker and a process mending its log may both ask. Returns (run id, created here)."""
        created: list[str] = []

        def create() -> str:
            created.append(self._create_run(name, tags))
            return created[0]

        return self._state.get_or_create(self._key(f"trial:{key}"), create), bool(created)

    def _find_trial_run(self, key: str) -> str | None:
        if self._state is None:
            return None
        return self._safe("looking up a trial run",
                          lambda: self._state.get_or_create(self._key(f"trial:{key}"), lambda: None))

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
        for key in ("train_acc", "val_acc", "lr"):
            self._metric(run_id, key, metrics.get(key), epoch)

    def on_trial_end(self, phase: PhaseSpec, trial: Any, result: Any, reason: str | None,
                     progress: dict[str, Any]) -> None:
        run_id = self._trial_runs.pop(trial.trial_id, None)
        if run_id is not None:
            if result is not None:
                self._metric(run_id, "final_val_acc", result.val_acc, 0)
                self._metric(run_id, "final_train_acc", result.train_acc, 0)
                self._metric(run_id, "seconds", result.seconds, 0)
            self._end_trial_run(run_id, trial.state, reason)
        self._log_progress(phase, progress)

    def _end_trial_run(self, run_id: str, state: str, reason: str | None) -> None:
        """Pending metrics and params, the final tags, then the end: two calls."""
        from mlflow.entities import RunTag

        tags = [RunTag("state", state)]
        if reason:
            tags.append(RunTag("failure", mask_url(reason)[:5000]))
        metrics = self._pending.pop(run_id, [])
        params = self._pending_params.pop(run_id, [])
        self._last_flush.pop(run_id, None)
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            chunk, batch_tags = metrics[start:start + 1000], tags if start == 0 else []
            self._safe("ending a trial run", lambda chunk=chunk, params=params, batch_tags=batch_tags:
                       self.client.log_batch(run_id, metrics=chunk, params=params, tags=batch_tags))
            params = []
        self._safe("ending a trial run", lambda: self.client.set_terminated(run_id, status=_run_status(state, reason)))

    def _log_progress(self, phase: PhaseSpec, progress: dict[str, Any]) -> None:
        phase_run = self._phase_runs.get(phase.name)
        if phase_run is not None:
            self._metric(phase_run, "best_val_acc", progress.get("best_value"), progress.get("done", 0))
            self._metric(phase_run, "trials_done", progress.get("done"), progress.get("done", 0))
            self._send(phase_run)
        if self._study_run is not None:
            self._study_steps += 1
            self._metric(self._study_run, "best_val_acc", progress.get("study_best_value"), self._study_steps)
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
        done = status["state"] == "complete"
        if self._reopened:
            self._safe("ending a phase run",
                       lambda: self.client.set_terminated(run_id, status="FINISHED" if done else "KILLED"))

    def on_study_end(self, summary: dict[str, Any], report: StudyReport | None) -> None:
        run_id = self._study_run
        if run_id is None:
            return
        self._send(run_id, force=True)
        if report is not None:
            self._log_study_artifacts(run_id, report)
        if self._reopened:  # a look at a finished study leaves its end time alone
            self._safe("ending the study run", lambda: self.client.set_terminated(
                run_id, status="FINISHED" if summary.get("complete") else "KILLED"))

    def _log_study_artifacts(self, run_id: str, report: StudyReport) -> None:
        from mlflow.entities import Metric, RunTag

        from hpsearch.backends import get_backend
        from hpsearch.report import write_report

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "report"
            write_report(report, folder)
            self._safe("logging the plots", lambda: self.client.log_artifacts(run_id, str(folder)))
            best = report.best
            if best is None or report.best_result is None:
                return
            backend = get_backend(self.spec.model.backend)
            model_file = Path(tmp) / f"best_model{backend.MODEL_SUFFIX}"
            backend.save_model(report.best_result.model, report.best_result.config, model_file)
            self._safe("logging the best model", lambda: self.client.log_artifact(run_id, str(model_file), "model"))
            metrics = [Metric("best_val_acc_final", best["value"], _now_ms(), 0)]
            if best.get("test_acc") is not None:
                metrics.append(Metric("test_acc", best["test_acc"], _now_ms(), 0))
            tags = [RunTag("best_phase", best["phase"]), RunTag("best_trial", str(best["trial"])),
                    RunTag("best_config", json.dumps(best["config"])[:5000])]
            self._safe("logging the result", lambda: self.client.log_batch(run_id, metrics=metrics, tags=tags))
        for phase_name, phase_run in self._phase_runs.items():
            status = next((p for p in report.summary.get("phases", []) if p["phase"] == phase_name), None)
            if status and status.get("best_value") is not None:
                self._safe("logging a phase result", lambda phase_run=phase_run, status=status:
                           self.client.log_batch(phase_run, metrics=[
                               Metric("best_val_acc_final", status["best_value"], _now_ms(), 0)]))

    # ---- reconciliation --------------------------------------------------------------------------------------

    def sync(self, state: SharedState, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]],
             report: StudyReport | None) -> dict[str, int]:
        """Create the runs MLflow is missing and end the runs it left RUNNING, from the Optuna storage's rows.

        Raises whatever MLflow raises: unlike a study, a sync exists to talk to MLflow.
        """
        self._state = state
        self._reported = False
        client = self.client
        study_run = state.get_or_create(self._key(self.spec.name), lambda: self._create_run(
            self.spec.name, {"hpsearch.kind": "study", "hpsearch.study": self.spec.name}))
        self._study_run = study_run
        counts = self._reconcile(trials, phases)
        if report is not None and report.best is not None:
            artifacts = {a.path for a in client.list_artifacts(study_run)}
            if "best_config.yaml" not in artifacts:
                self._log_study_artifacts(study_run, report)
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
                        "hpsearch.kind": "phase", "hpsearch.study": self.spec.name, "hpsearch.phase": name,
                        "optuna.study": info["study_name"], "mlflow.parentRunId": self._study_run}))
        existing: dict[str, Any] = {}
        token = None
        while True:
            page = client.search_runs([experiment], filter_string="tags.`hpsearch.kind` = 'trial'",
                                      max_results=1000, page_token=token)
            for run in page:
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
                self._rebuild_trial_run(row)
                created += 1
            elif run.info.status == "RUNNING":
                self._end_trial_run(run.info.run_id, row["state"], row.get("failure"))
                ended += 1
        return {"created": created, "ended": ended}

    def _rebuild_trial_run(self, row: dict[str, Any], status: str | None = None) -> None:
        phase = row["phase"]
        tags = {
            "mlflow.parentRunId": self._phase_runs[phase], TRIAL_KEY: f"{row['optuna_study']}/{row['number']}",
            "hpsearch.kind": "trial", "phase": phase, "trial_number": str(row["number"]),
            "optuna_study": row["optuna_study"], "grid_point": str(row.get("point", "")), "seed": str(row["seed"]),
            "backend": self.spec.model.backend, "state": row["state"], "hpsearch.synced": "true",
        }
        if row.get("failure"):
            tags["failure"] = mask_url(str(row["failure"]))[:5000]
        run_id, created = self._trial_run(tags[TRIAL_KEY], f"{phase}-{row['number']}", tags)
        if not created:
            return  # its worker created it meanwhile and logs it
        history = row.get("epoch_history") or {}
        iterations = history.get("iteration") or []
        for epoch in range(len(history.get("val_acc") or [])):
            for key in ("train_acc", "val_acc", "lr"):
                self._metric(run_id, key, (history.get(key) or [None] * (epoch + 1))[epoch], epoch)
            # only the epoch's mean loss survives in the storage; it is logged at the epoch's last iteration
            step = iterations[epoch] if epoch < len(iterations) else epoch
            self._metric(run_id, "loss", (history.get("loss") or [None] * (epoch + 1))[epoch], step)
        if row["state"] == "COMPLETE":
            self._metric(run_id, "final_val_acc", row["value"], 0)
        if row.get("duration_seconds") is not None:
            self._metric(run_id, "seconds", row["duration_seconds"], 0)
        config = resolved_config(self.spec, row["params"])
        self._pending_params[run_id] = self._params({**config, "seed": row["seed"]})
        self._send(run_id, force=True)
        self.client.set_terminated(run_id, status=status or _run_status(row["state"], row.get("failure")))


def _serve(logger: MlflowLogger, inbox: Any, outbox: Any, seconds: Any) -> None:
    """The tracking process: apply hook calls in order until told to stop; messages go to outbox.

    Signals are the study's to handle (it closes this process); a study process that died leaves this one orphaned,
    and what is still queued belongs to it: the next run, or `hpsearch sync`, mends MLflow from the storage.
    """
    logger.echo = outbox.put
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    from hpsearch import report  # noqa: F401 - warm the plotting imports while the study trains
    report._pyplot()
    parent = os.getppid()
    while True:
        try:
            message = inbox.get(timeout=5)
        except queue.Empty:
            message = ()
        if os.getppid() != parent or message is None:
            return
        if not message:
            continue
        name, args = message
        try:
            getattr(logger, name)(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking bug must not leave the study waiting
            logger._failed(name, exc)
        finally:
            seconds.value = logger.seconds


def _forwarded(name: str) -> Callable[..., None]:
    def forward(self: MlflowTracker, *args: Any) -> None:
        self._send(name, *args)

    forward.__name__ = name
    forward.__doc__ = f"Hand ``{name}`` to the tracking process."
    return forward


class MlflowTracker(StudyListener):
    """The driver's listener: hands every hook to a separate tracking process.

    MLflow's client is slow (tens of milliseconds per call on a SQLite store) and holds the GIL; in its own process
    it uses a spare core instead of the training loop's time, and a hung server cannot stall a trial. Hooks are
    forwarded as (name, arguments) messages; epochs are batched here and sent every ``FLUSH_SECONDS``. A tracking
    process that dies is reported once and the study goes on without it.
    """

    wants_report = True
    FORWARDED = ("on_study_start", "on_phase_start", "on_trial_start", "on_trial_reaped", "on_existing_trials",
                 "on_phase_end")

    def __init__(self, spec: StudySpec, uri: str, echo: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.uri = uri
        self.experiment = spec.tracking.experiment or spec.name
        self.echo = echo
        self._process: Any = None
        self._dead = False
        self._epochs: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        self._epochs_sent: dict[int, float] = {}
        self._inbox: Any = None
        self._outbox: Any = None
        self._seconds: Any = None
        self._last_seconds = 0.0

    @property
    def seconds(self) -> float:
        """Time the tracking process spent in MLflow calls."""
        return self._seconds.value if self._seconds is not None else self._last_seconds

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._inbox, self._outbox = context.Queue(), context.Queue()
        self._seconds = context.Value("d", self._last_seconds, lock=False)
        logger = MlflowLogger(self.spec, self.uri)
        self._process = context.Process(target=_serve, args=(logger, self._inbox, self._outbox, self._seconds),
                                        name="hpsearch-tracking", daemon=True)
        self._process.start()

    def _send(self, name: str, *args: Any) -> None:
        if self._dead:
            return
        if self._process is None:
            self._start()
        elif not self._process.is_alive():
            self._died()
            return
        self._inbox.put((name, args))
        self._relay()

    def _died(self) -> None:
        self._dead = True
        self._relay()
        self.echo(f"tracking: the tracking process died (exit code {self._process.exitcode}); the study continues "
                  f"without MLflow, and the next run or `hpsearch sync {self.spec.source}` fills it in")

    def _relay(self) -> None:
        """Print what the tracking process had to say, from this process, so it lands with the study's output."""
        while self._outbox is not None:
            try:
                self.echo(self._outbox.get_nowait())
            except (queue.Empty, OSError, EOFError):
                return

    def close(self, timeout: float = 60.0) -> None:
        """Wait (at most ``timeout`` seconds) for the tracking process to send everything queued."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._inbox.put(None)
            self._process.join(timeout)
            if self._process.is_alive():
                self.echo(f"tracking: MLflow did not take everything within {timeout:.0f}s; "
                          f"run `hpsearch sync {self.spec.source}` to fill it in")
                self._process.kill()
                self._process.join(5)
        elif not self._dead:
            self._died()
        self._relay()
        self._last_seconds = self._seconds.value
        # nobody reads the inbox any more: its feeder thread must not wait to deliver what is left
        self._inbox.cancel_join_thread()
        for channel in (self._inbox, self._outbox):
            channel.close()
        self._process = self._inbox = self._outbox = self._seconds = None

    def on_epoch(self, phase: PhaseSpec, trial: TrialInfo, epoch: int, metrics: dict[str, Any]) -> None:
        # epochs can be milliseconds long: collect them and send one message every FLUSH_SECONDS
        self._epochs.setdefault(trial.trial_id, []).append((epoch, metrics))
        if time.monotonic() - self._epochs_sent.get(trial.trial_id, 0.0) >= FLUSH_SECONDS:
            self._send_epochs(trial.trial_id)

    def _send_epochs(self, trial_id: int) -> None:
        self._epochs_sent[trial_id] = time.monotonic()
        epochs = self._epochs.pop(trial_id, [])
        if epochs:
            self._send("on_epochs", trial_id, epochs)

    def on_trial_end(self, phase: PhaseSpec, trial: TrialInfo, result: Any, reason: str | None,
                     progress: dict[str, Any]) -> None:
        self._send_epochs(trial.trial_id)
        self._epochs_sent.pop(trial.trial_id, None)
        if result is not None:
            result = dataclasses.replace(result, model=None)  # histories only; the model stays here
        self._send("on_trial_end", phase, trial, result, reason, progress)

    def on_study_end(self, summary: dict[str, Any], report: StudyReport | None) -> None:
        self._send("on_study_end", summary, report)
        self.close()

    def saved_model(self, state: SharedState) -> Path | None:
        """The study run's best model in a local artifact store, once the study logged it."""
        from hpsearch.backends import get_backend

        logger = MlflowLogger(self.spec, self.uri)
        run_id = state.get_or_create(logger._key(self.spec.name), lambda: None)
        location = _artifact_location(self.uri)
        if not run_id or location is None:
            return None
        suffix = get_backend(self.spec.model.backend).MODEL_SUFFIX
        experiments = Path(location.removeprefix("file://"))
        path = experiments / run_id / "artifacts" / "model" / f"best_model{suffix}"
        return path if path.is_file() else None

    def sync(self, state: SharedState, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]],
             report: StudyReport | None) -> dict[str, int]:
        """See :meth:`MlflowLogger.sync`; runs in this process."""
        try:
            return MlflowLogger(self.spec, self.uri, echo=self.echo).sync(state, trials, phases, report)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow and network errors vary; all mean "MLflow unusable now"
            reason = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise TrackingError(f"sync to MLflow at {mask_url(self.uri)} failed: {reason[:300]}") from None


for _name in MlflowTracker.FORWARDED:
    setattr(MlflowTracker, _name, _forwarded(_name))
