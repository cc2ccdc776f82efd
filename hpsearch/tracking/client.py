"""MLflow's client as hpsearch uses it: the URI, the experiment, runs shared by every process, batched writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

from hpsearch.errors import UserError
from hpsearch.spec.models import StudySpec
from hpsearch.storage.connections import storage_lock
from hpsearch.storage.records import INTERRUPTED, REAPED, SharedState
from hpsearch.storage.urls import expand_home, mask_url, register_secret_url, same_database, sqlite_path
from hpsearch.tracking.localstore import artifact_location, made_whole

__all__ = ["MlflowBase", "TrackingError", "failure_reason", "resolve_tracking_uri"]

# A dead server must cost seconds, not MLflow's default minutes of retries; users can still override these. One
# retry, made at once (urllib3 waits only before a second, and a server's Retry-After is not waited for): a server
# that ends a kept-alive connection just as a request goes out on it has not lost tracking; without it, the first
# call after a few idle seconds (the study's plots) could fail so. MLflow retries such a read error for idempotent
# requests only: a POST that meets it still fails, and is reported once.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER", "false")
# MLflow 3 records usage telemetry around every client call: time the tracking process needs for the study's runs
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TRIAL_KEY = "hpsearch.trial_key"
STUDY_ID = "hpsearch.study_id"  # see MlflowBase._study_id
FLUSH_SECONDS = 2.0  # metrics of a running trial reach MLflow at least this often
MAX_METRICS_PER_BATCH = 1000  # what MLflow takes in one log_batch
RETRY_SECONDS = 60.0  # after a failure, how long tracking pauses before trying MLflow again
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# MLflow 3's UI opens an experiment of this kind on its runs, not on the GenAI overview (traces)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's REST errors start with the request's whole URL, which a notice already names by its server
REQUEST_PREFIX = re.compile(r"^API request to (endpoint )?\S+ failed with (timeout exception |exception )?")


def failure_reason(exc: Exception) -> str:
    """What went wrong in an MLflow call, in one line: the first of its message (its type where it has none), any
    password masked, MLflow's copy of the request URL left out."""
    reason = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return REQUEST_PREFIX.sub("", reason) or reason


class TrackingError(UserError):
    """MLflow could not be reached when reaching it was the point (``hpsearch sync``)."""


def resolve_tracking_uri(spec: StudySpec, storage_url: str, cli_uri: str | None = None) -> str | None:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the spec's, else ``sqlite:///`` beside the storage;
    a SQLite path's ``~`` expanded, as the storage's is.

    None when the spec turns tracking off. Raises UserError for a URI that names the study storage's own database:
    MLflow's tables would go in beside Optuna's (both keep an ``alembic_version``), and ``hpsearch sync``, which
    rebuilds MLflow from the storage, could not mend what that broke.
    """
    if not spec.tracking.enabled:
        return None
    given = (("--tracking-uri", cli_uri), ("$MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI")),
             (f"{spec.source}: tracking.uri", spec.tracking.uri))
    source, uri = next(((source, uri) for source, uri in given if uri), (None, None))
    if uri is None:
        database = sqlite_path(storage_url)
        folder = database.parent if database is not None else Path("runs")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        if same_database(uri, storage_url):
            raise UserError(f"storage {mask_url(storage_url)!r} is the file MLflow's database takes by default "
                            "(mlflow.db beside the storage); give the storage another file name, or MLflow another "
                            "database with --tracking-uri.")
        return uri
    register_secret_url(uri)  # masked in every message, like the storage's
    uri = expand_home(uri, source)
    if same_database(uri, storage_url):
        raise UserError(f"{source} must name a database other than the study storage {mask_url(storage_url)!r} "
                        f"(MLflow needs one of its own). Got {mask_url(uri)!r} instead.")
    return uri


def _run_status(state: str, reason: str | None) -> str:
    """MLflow's status for an Optuna trial state: KILLED when its process was stopped rather than the trial failing."""
    if reason in REAPED or reason == INTERRUPTED:
        return "KILLED"
    return STATUS.get(state, "FAILED")


def _echo_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowBase:
    """The plumbing of MLflow calls: one client, failures reported once, a write lock, batched metrics and params."""

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
        # when the study process made the call being applied (seconds since the epoch; None: now): a trial run's
        # start and end are the trial's, however far behind this process is
        self.sent_at: float | None = None
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
            self.echo(f"tracking: MLflow at {mask_url(self.uri)} failed while {what} ({failure_reason(exc)[:400]}); "
                      f"the study continues, and `hpsearch sync {self.spec.source}` fills MLflow in afterwards")

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            # failures are reported once, in one line, by _failed; MLflow's own tracebacks would only repeat them
            logging.getLogger("mlflow").setLevel(logging.CRITICAL)
            logging.getLogger("alembic").setLevel(logging.WARNING)

            database = sqlite_path(self.uri)
            if database is None:
                self._client = MlflowClient(tracking_uri=self.uri)
                return self._client
            database.parent.mkdir(parents=True, exist_ok=True)
            # MLflow keeps one store per URI: a relative path must not mean another folder's database later
            uri = f"sqlite:///{database.resolve()}"
            # one process at a time makes MLflow's tables; one killed doing so (Ctrl-C stops a tracking process
            # at once) leaves them half made, which the next one finds and makes again
            lock = storage_lock(self._state.url, "mlflow-init") if self._state else contextlib.nullcontext()
            with lock:
                made_whole(database)
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)  # the store, made whole under the lock
            self._client = client
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            self.client  # noqa: B018 - the store made first, under the same lock, taken once at a time
            # workers starting together on a fresh MLflow database would race creating the experiment
            lock = storage_lock(self._state.url, "mlflow-init") if self._state else contextlib.nullcontext()
            with lock:
                self._find_or_create_experiment()
            if self._state is not None and self._state.get(self._key("experiment")) != self._experiment_id:
                self._state.put(self._key("experiment"), self._experiment_id)  # for the summary's link
        return self._experiment_id

    def _find_or_create_experiment(self) -> None:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=artifact_location(self.uri), tags=EXPERIMENT_TAGS)
                    return
                except Exception:  # another worker created it first
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            self._experiment_id = found.experiment_id
            for key, value in EXPERIMENT_TAGS.items():
                if found.tags.get(key) != value:
                    self.client.set_experiment_tag(found.experiment_id, key, value)

    @property
    def _study_id(self) -> str:
        """This study in this storage, the same whatever URL reaches it: a random id kept in the storage, tagged on
        every run (``hpsearch.study_id``), so that a study of the same name in another storage, logged to the same
        experiment, is never taken for this one."""
        import uuid

        return self._state.get_or_create("study_id", lambda: uuid.uuid4().hex)

    def _key(self, name: str) -> str:
        """Names of shared parent ids; they belong to one tracking server and experiment."""
        where = hashlib.sha1(f"{self.uri}|{self.experiment}".encode()).hexdigest()[:10]
        return f"mlflow:{where}:{name}"

    def _create_run(self, name: str, tags: dict[str, str], start_ms: int | None = None) -> str:
        run = self.client.create_run(self._experiment(), run_name=name, tags=tags, start_time=start_ms or self._ms())
        return run.info.run_id

    def _ms(self) -> int:
        """The time of the call being applied, in MLflow's milliseconds."""
        return int((self.sent_at or time.time()) * 1000)

    def _study_tags(self) -> dict[str, str]:
        """What tells a study run from a namesake's in another storage logged to the same experiment."""
        where = mask_url(self._state.url)
        return {"hpsearch.kind": "study", "hpsearch.study": self.spec.name, STUDY_ID: self._study_id,
                "hpsearch.storage": where, "mlflow.note.content": f"Study {self.spec.name!r} stored in {where}"}

    def _parent_run(self, name: str, kind: str, parent: str | None, extra: dict[str, str],
                    reopen: bool = True) -> str | None:
        state = self._state

        def create() -> str:
            tags = {"hpsearch.kind": kind, "hpsearch.study": self.spec.name, STUDY_ID: self._study_id, **extra}
            if kind == "study":
                tags.update(self._study_tags())
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
        self._log_batches("logging metrics", run_id, metrics, params)

    def _log_batches(self, what: str, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any] = ()) -> None:
        """``metrics`` in batches of at most MLflow's 1000, ``params`` and ``tags`` with the first; nothing when
        there is nothing to log."""
        for start in range(0, len(metrics) or bool(params or tags), MAX_METRICS_PER_BATCH):
            chunk = metrics[start:start + MAX_METRICS_PER_BATCH]
            first = start == 0
            self._safe(what, lambda chunk=chunk, first=first: self.client.log_batch(
                run_id, metrics=chunk, params=params if first else [], tags=list(tags) if first else []))

    def _metric(self, run_id: str, key: str, value: Any, step: int) -> None:
        from mlflow.entities import Metric

        from hpsearch.backends.base import is_number

        if not is_number(value):
            return  # None, or whatever else a trainable passes to on_epoch: only numbers are metrics
        self._pending.setdefault(run_id, []).append(Metric(key, float(value), _now_ms(), int(step)))

    @staticmethod
    def _params(config: dict[str, Any]) -> list[Any]:
        from mlflow.entities import Param

        return [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in sorted(config.items())]

    def _trial_run(self, key: str, name: str, tags: dict[str, str], start_ms: int | None = None) -> tuple[str, bool]:
        """The run of trial ``key``, created once among all processes (its id is kept in the study storage):
        the trial's own worker and a process mending its log may both ask. Returns (run id, created here)."""
        created: list[str] = []

        def create() -> str:
            created.append(self._create_run(name, tags, start_ms))
            return created[0]

        return self._state.get_or_create(self._key(f"trial:{key}"), create), bool(created)

    def _trial_tags(self, phase: str, optuna_study: str, number: int, point: int | None, seed: Any,
                    state: str) -> dict[str, str]:
        """The tags of a trial's run, the same whether its worker logs it live or a sync rebuilds it."""
        tags = {
            TRIAL_KEY: f"{optuna_study}/{number}", STUDY_ID: self._study_id, "hpsearch.kind": "trial",
            "phase": phase, "trial_number": str(number), "optuna_study": optuna_study,
            "grid_point": "" if point is None else str(point), "seed": str(seed),
            "backend": self.spec.model.backend, "state": state,
        }
        if phase in self._phase_runs:
            tags["mlflow.parentRunId"] = self._phase_runs[phase]
        return tags

    def _find_trial_run(self, key: str) -> str | None:
        if self._state is None:
            return None
        return self._safe("looking up a trial run",
                          lambda: self._state.get_or_create(self._key(f"trial:{key}"), lambda: None))

    def _end_trial_run(self, run_id: str, state: str, reason: str | None, device: str | None = None) -> None:
        """Pending metrics and params, the final tags (what it trained on among them), then the end: two calls."""
        from mlflow.entities import RunTag

        tags = [RunTag("state", state)]
        if reason:
            tags.append(RunTag("failure", mask_url(reason)[:5000]))
        if device:
            tags.append(RunTag("device", device))  # bounded where the trial stored it
        metrics = self._pending.pop(run_id, [])
        params = self._pending_params.pop(run_id, [])
        self._last_flush.pop(run_id, None)
        self._log_batches("ending a trial run", run_id, metrics, params, tags)
        self._safe("ending a trial run", lambda: self.client.set_terminated(run_id, status=_run_status(state, reason),
                                                                            end_time=self._ms()))
