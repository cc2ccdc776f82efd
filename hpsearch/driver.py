"""The study driver: runs a spec's phases as Optuna studies. The only module that talks to Optuna.

Storage layout: one Optuna study per phase, named ``<study>.<phase>``, and a registry study named ``<study>`` that
holds no trials, only attributes: what the study was started with (to refuse silent changes), which Optuna study
serves each phase, and the final result.

Exactly once. A random or grid phase is a fixed list of points (see :mod:`hpsearch.grid`). Each point is enqueued as a
WAITING trial and claimed by one process through the storage's atomic WAITING -> RUNNING transition. Under a lock
shared by every process on the storage, a reconcile step enqueues a point again only when it has no trial that is
COMPLETE, PRUNED, WAITING or RUNNING and has failed at most ``max_retries`` times. A trial whose process died
(heartbeat lost, or its pid gone on this host) is failed and so retried; a result that arrives after its trial was
failed is discarded, never counted twice.

Divergence policy: a NaN or infinite loss ends the trial at once as PRUNED with the reason in its ``failure``
attribute. Pruned trials have no objective value, so a diverged trial is never best, and it is not retried (the same
seed and configuration would diverge again).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hpsearch import grid as grids
from hpsearch.backends import DivergedError
from hpsearch.data import Dataset
from hpsearch.errors import SpecError, UserError
from hpsearch.spec import DerivedGrid, PhaseSpec, StudySpec, best_fragment
from hpsearch.storage import StorageError, mask_url, storage_lock
from hpsearch.training import load_data, resolved_config, train_once

__all__ = ["Budget", "Driver", "SharedState", "StudyListener", "StudyReport"]

ATTR = "hpsearch:"
POINT, ATTEMPT, OWNER = "point", "attempt", ATTR + "owner"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
INTERRUPTED = "interrupted"
HEARTBEAT_LOST, WORKER_DIED, NEVER_STARTED = "heartbeat lost", "worker died", "claimed by a process that never started it"
REAPED = (HEARTBEAT_LOST, WORKER_DIED, NEVER_STARTED)  # failures of trials whose process is gone
POLL_SECONDS = 2.0
EPOCH_KEYS = ("loss", "train_acc", "val_acc", "lr", "iteration")  # kept per trial, so tracking can be rebuilt

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class SharedState:
    """Values a listener keeps in the study storage, visible to every process working on the study.

    Picklable: it carries the storage URL, not a connection, so a tracking process can open its own.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.study_name = study_name
        self._registry: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "study_name": self.study_name, "_registry": None}

    def _study(self) -> optuna.Study:
        if self._registry is None:
            storage = optuna.storages.RDBStorage(self.url)
            with storage_lock(self.url, f"{self.study_name}:registry"):
                self._registry = optuna.create_study(study_name=self.study_name, storage=storage,
                                                     load_if_exists=True)
        return self._registry

    def trial(self, trial_id: int) -> FrozenTrial:
        """A trial as the storage has it now."""
        return self._study()._storage.get_trial(trial_id)

    def get_or_create(self, key: str, factory: Callable[[], Any]) -> Any:
        """The value stored under ``key``, created by exactly one process (under the storage lock)."""
        registry = self._study()
        name = ATTR + "shared:" + key
        value = registry.user_attrs.get(name)
        if value is not None:
            return value
        with storage_lock(self.url, f"{self.study_name}:shared:{key}"):
            value = registry.user_attrs.get(name)
            if value is None:
                value = factory()
                if value is not None:  # a factory returning None only looks
                    registry.set_user_attr(name, value)
            return value


class StudyListener:
    """Hooks the driver calls as a study runs; tracking implements them. Every method is optional.

    ``trial`` arguments are Optuna ``FrozenTrial`` objects; ``progress`` is the phase's status (see
    :meth:`Driver.status`) plus ``study_best_value``.
    """

    def on_study_start(self, spec: StudySpec, state: SharedState) -> None: ...

    def on_phase_start(self, phase: PhaseSpec, info: dict[str, Any]) -> None: ...

    def on_trial_start(self, phase: PhaseSpec, trial: FrozenTrial, config: dict[str, Any], seed: int,
                       replaces: FrozenTrial | None) -> None: ...

    def on_epoch(self, phase: PhaseSpec, trial: FrozenTrial, epoch: int, metrics: dict[str, Any]) -> None: ...

    def on_trial_end(self, phase: PhaseSpec, trial: FrozenTrial, result: Any, reason: str | None,
                     progress: dict[str, Any]) -> None: ...

    def on_trial_reaped(self, phase: PhaseSpec, trial: FrozenTrial, reason: str) -> None: ...

    def on_existing_trials(self, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]]) -> None:
        """Before work starts: every trial already stored (rows of :meth:`Driver.trials`), per phase its study."""

    def on_phase_end(self, phase: PhaseSpec, status: dict[str, Any]) -> None: ...

    def on_study_end(self, summary: dict[str, Any], report: StudyReport | None) -> None: ...

    def close(self, timeout: float = 60.0) -> None:
        """Finish whatever is pending; called however the run ends."""


@dataclass
class StudyReport:
    """Everything the plots and summaries of a finished study need, as plain data.

    trials: rows of :meth:`Driver.trials`. spaces: per phase, the searched parameters and whether each is on a log
    scale. importances: per phase, parameter importances (empty where they cannot be computed). best: see
    :meth:`Driver.best`. best_result: the best trial retrained with its own seed (histories and model).
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
    summary: dict[str, Any]


@dataclass
class Budget:
    """Limits of one invocation: wall seconds and trials started. Checked between trials."""

    timeout: float | None = None
    max_trials: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    trials: int = 0

    def exhausted(self) -> bool:
        if self.max_trials is not None and self.trials >= self.max_trials:
            return True
        return self.timeout is not None and time.monotonic() - self.started_at >= self.timeout


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the current trial was failed and will be retried on the next run."""


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def encode_param(value: Any) -> Any:
    """Optuna stores only primitive categoricals: lists (e.g. hidden_sizes) travel as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode_param(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params as the user wrote them: lists back from their JSON text."""
    return {name: decode_param(value) for name, value in params.items()}


def _pid_namespace() -> str:
    """This process's host and pid namespace: containers sharing a hostname must not judge each other's pids."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
            "pidns": _pid_namespace()}


def _owner_is_dead(owner: dict[str, Any] | None) -> bool:
    """True when the trial's process ran in this pid namespace and is gone (or its pid was reused)."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    if not owner.get("pidns") or owner.get("pidns") != _pid_namespace():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return owner.get("start") is not None and _process_start(pid) != owner.get("start")


@contextlib.contextmanager
def _heartbeat(storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is harmless; the grace period absorbs it
                storage.record_heartbeat(trial_id)

    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C for the duration, so both end the current trial cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _describe_changes(stored: Any, current: Any, path: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        changes = []
        for key in sorted(set(stored) | set(current), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in current:
                changes.append(f"{where}: removed (was {json.dumps(stored[key])})")
            elif key not in stored:
                changes.append(f"{where}: added {json.dumps(current[key])}")
            else:
                changes.extend(_describe_changes(stored[key], current[key], where))
        return changes
    if stored != current:
        return [f"{path}: {json.dumps(stored)} -> {json.dumps(current)}"]
    return []


def _storage_failures(method: Callable[..., Any]) -> Callable[..., Any]:
    """A storage that fails mid-work (disk full, server gone) is a clear StorageError, not a traceback. Every write
    is a transaction, so what was finished stays finished; an unfinished trial is reaped and retried on resume."""
    import functools

    import sqlalchemy.exc

    @functools.wraps(method)
    def guarded(self: Driver, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
            cause = exc.__cause__ or exc
            reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
            raise StorageError(
                f"storage {mask_url(self.url)!r} failed: {mask_url(reason)[:200]} (disk full or database gone?). "
                "Finished trials are kept; fix it and rerun the same command to resume."
            ) from None

    return guarded


class Driver:
    """Runs, inspects and reports one study spec on one storage."""

    def __init__(
        self,
        spec: StudySpec,
        storage_url: str,
        *,
        listener: StudyListener | None = None,
        echo: Callable[[str], None] = print,
        force_new_phase: bool = False,
    ) -> None:
        self.spec = spec
        self.url = storage_url
        self.listener = listener or StudyListener()
        self.echo = echo
        self.force_new_phase = force_new_phase
        self._data: Dataset | None = None
        try:
            with warnings.catch_warnings(), storage_lock(storage_url, "schema"):
                # under the lock: processes starting together on a fresh database would race creating its tables
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.storage = optuna.storages.RDBStorage(
                    storage_url,
                    heartbeat_interval=spec.heartbeat.interval,
                    grace_period=spec.heartbeat.grace_period,
                    engine_kwargs={"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else None,
                )
        except Exception as exc:  # SQLAlchemy and driver errors vary by database; all mean "cannot use it"
            reason = mask_url(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
            raise StorageError(f"storage {mask_url(storage_url)!r} cannot be opened: {reason}") from None

    # ---- storage records -------------------------------------------------------------------------------------

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_data(self.spec)
        return self._data

    def _registry(self, create: bool) -> optuna.Study | None:
        try:
            return optuna.load_study(study_name=self.spec.name, storage=self.storage)
        except KeyError:
            if not create:
                return None
        with storage_lock(self.url, f"{self.spec.name}:registry"):
            return optuna.create_study(study_name=self.spec.name, storage=self.storage, load_if_exists=True)

    def _context(self) -> dict[str, Any]:
        """What gives trials their meaning; a change here would make old and new trials incomparable."""
        spec = self.spec
        return {
            "seed": spec.seed,
            "data": spec.data.model_dump(exclude={"path"}),
            "model": spec.model.model_dump(),
            "defaults": spec.defaults,
            "objective": spec.objective.model_dump(),
            "data_fingerprint": self.data.fingerprint,
        }

    @staticmethod
    def _definition(phase: PhaseSpec) -> dict[str, Any]:
        definition = phase.model_dump(mode="json", by_alias=True, exclude={"name", "n_trials", "max_retries"})
        return {key: value for key, value in definition.items() if value not in (None, {}, [])}

    def _check_context(self, registry: optuna.Study) -> None:
        stored = registry.user_attrs.get(ATTR + "context")
        current = json.loads(json.dumps(self._context()))
        if stored is None:
            registry.set_user_attr(ATTR + "context", current)
            return
        changes = _describe_changes(stored, current)
        if changes and not self.force_new_phase:
            raise SpecError(
                f"{self.spec.source}: the spec changed since study {self.spec.name!r} started: {'; '.join(changes)}. "
                "Restore it, or rerun with --force-new-phase to start every phase afresh (stored trials are kept)."
            )
        if changes:
            with storage_lock(self.url, f"{self.spec.name}:phases"):
                registry.set_user_attr(ATTR + "context", current)
                registry.set_user_attr(ATTR + "phases", {p.name: self._next_version(p) for p in self.spec.phases})
                registry.set_user_attr(ATTR + "result", None)

    def _next_version(self, phase: PhaseSpec) -> str:
        """A fresh Optuna study name for ``phase``: ``<study>.<phase>.v2``, ``.v3``, ..."""
        names = self._study_names()
        version = 2
        while f"{self.spec.name}.{phase.name}.v{version}" in names:
            version += 1
        return f"{self.spec.name}.{phase.name}.v{version}"

    def _phase_study_name(self, registry: optuna.Study | None, phase: PhaseSpec) -> str:
        phases = (registry.user_attrs.get(ATTR + "phases") or {}) if registry else {}
        return phases.get(phase.name, f"{self.spec.name}.{phase.name}")

    def _load_phase(self, phase: PhaseSpec, registry: optuna.Study | None = None) -> optuna.Study | None:
        registry = registry or self._registry(create=False)
        name = self._phase_study_name(registry, phase)
        try:
            return optuna.load_study(study_name=name, storage=self.storage, sampler=self._sampler(phase, 0))
        except KeyError:
            return None

    def _sampler(self, phase: PhaseSpec, salt: int) -> optuna.samplers.BaseSampler:
        seed = grids.trial_seed(self.spec.seed, phase.name, salt)
        if phase.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)  # random and grid points are enqueued with fixed params

    def _pruner(self) -> optuna.pruners.BasePruner:
        p = self.spec.pruner
        if p.type == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
        if p.type == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                          reduction_factor=p.reduction_factor)
        if p.type == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1 if p.min_resource == "auto" else p.min_resource,
                                                  reduction_factor=p.reduction_factor)
        return optuna.pruners.NopPruner()

    def _open_phase(self, registry: optuna.Study, phase: PhaseSpec) -> optuna.Study:
        """The phase's Optuna study, created (and its grid derived) exactly once, checked against the spec."""
        with storage_lock(self.url, f"{self.spec.name}:phases"):
            phases = dict(registry.user_attrs.get(ATTR + "phases") or {})
            name = phases.get(phase.name, f"{self.spec.name}.{phase.name}")
            existing = self._load_phase(phase, registry)
            definition = json.loads(json.dumps(self._definition(phase)))
            if existing is not None:
                if not self._definition_changes(phase, existing):
                    study = existing
                    study.pruner = self._pruner()
                    return study
                name = self._next_version(phase)
            points_grid = self._points_grid(phase)  # derive before creating, so a failure leaves nothing behind
            study = optuna.create_study(
                study_name=name, storage=self.storage, direction=self.spec.objective.direction,
                sampler=self._sampler(phase, 0), pruner=self._pruner(),
            )
            study.set_user_attr(ATTR + "definition", definition)
            if points_grid is not None:
                study.set_user_attr(ATTR + "grid", points_grid)
                if isinstance(phase.grid, DerivedGrid):
                    self.echo(f"[{phase.name}] derived grid from the top {phase.grid.top_k} trials of "
                              f"{phase.grid.source!r}: {json.dumps(points_grid)}")
            phases[phase.name] = name
            registry.set_user_attr(ATTR + "phases", phases)
            return study

    def _definition_changes(self, phase: PhaseSpec, existing: optuna.Study) -> list[str]:
        """What changed in the phase since its study was created; raises unless --force-new-phase was given."""
        definition = json.loads(json.dumps(self._definition(phase)))
        changes = _describe_changes(existing.user_attrs.get(ATTR + "definition"), definition)
        if changes and not self.force_new_phase:
            finished = sum(t.state in FINISHED for t in existing.get_trials(deepcopy=False))
            raise SpecError(
                f"{self.spec.source}: phase {phase.name!r} changed since it started: {'; '.join(changes)}. "
                f"Restore it, or rerun with --force-new-phase to start the phase afresh "
                f"(its {finished} finished trials stay in the storage)."
            )
        return changes

    def _study_names(self) -> set[str]:
        return {s.study_name for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False)}

    def _points_grid(self, phase: PhaseSpec) -> dict[str, list[Any]] | None:
        """The grid a grid phase enumerates (derived now if the spec asks for it); None for other samplers."""
        if phase.sampler != "grid":
            return None
        if isinstance(phase.grid, dict):
            return phase.grid
        source_phase = self.spec.phase(phase.grid.source)
        source = self._load_phase(source_phase)
        complete = [t for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))] if source else []
        if not complete:
            raise UserError(f"phase {phase.name!r}: cannot derive its grid: phase {source_phase.name!r} "
                            "has no complete trials yet.")
        reverse = self.spec.objective.direction == "maximize"
        top = sorted(complete, key=lambda t: t.value, reverse=reverse)[: phase.grid.top_k]
        return grids.derive_grid(source_phase.space, [decode_params(t.params) for t in top], phase.grid.points)

    def _points(self, phase: PhaseSpec, study: optuna.Study) -> list[dict[str, Any]] | None:
        if phase.sampler == "grid":
            return grids.grid_points(study.user_attrs[ATTR + "grid"])
        if phase.sampler == "random":
            return grids.random_points(phase.space, phase.n_trials, self.spec.seed, phase.name)
        return None

    # ---- claiming and reconciling ----------------------------------------------------------------------------

    @staticmethod
    def _counts_as_failure(trial: FrozenTrial) -> bool:
        return trial.state == TrialState.FAIL and trial.user_attrs.get("failure") != INTERRUPTED

    def _reconcile(self, phase: PhaseSpec, study: optuna.Study, points: list[dict[str, Any]]) -> int:
        """Enqueue every point that needs a trial; under the storage lock so no two processes enqueue one point."""
        enqueued = 0
        with storage_lock(self.url, f"{study.study_name}:points"):
            by_point: dict[int, list[FrozenTrial]] = {}
            for trial in study.get_trials(deepcopy=False):
                by_point.setdefault(trial.user_attrs.get(POINT, -1), []).append(trial)
            # a seeded shuffle: pruners compare against a spread of the grid, and a budget stops on a random subset
            order = np.random.default_rng([self.spec.seed, len(points)]).permutation(len(points))
            for point in (int(p) for p in order):
                params = points[point]
                trials = by_point.get(point, [])
                if any(t.state != TrialState.FAIL for t in trials):
                    continue  # finished, or claimed / queued
                failures = sum(self._counts_as_failure(t) for t in trials)
                if failures > phase.max_retries:
                    continue  # exhausted: reported as failed
                study.enqueue_trial({name: encode_param(value) for name, value in params.items()},
                                    user_attrs={POINT: point, ATTEMPT: len(trials) + 1})
                enqueued += 1
        return enqueued

    def _claim(self, study: optuna.Study, points: int) -> int | None:
        """Move one WAITING trial of a point below ``points`` to RUNNING, marked with this process as its owner.

        Under the storage lock: PostgreSQL's row lock would make the transition atomic by itself, SQLite's does not.
        """
        with storage_lock(self.url, f"{study.study_name}:claim"):
            for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                if trial.user_attrs.get(POINT, 0) >= points:
                    continue  # queued before n_trials was lowered
                try:
                    if self.storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                        self._own(trial._trial_id)
                        return trial._trial_id
                except UpdateFinishedTrialError:
                    continue
        return None

    def _own(self, trial_id: int) -> None:
        """Mark a just-claimed trial as this process's, so it can be reaped if the process dies."""
        self.storage.set_trial_user_attr(trial_id, OWNER, _owner())
        self.storage.record_heartbeat(trial_id)

    def _reap(self, phase: PhaseSpec, study: optuna.Study) -> None:
        """Fail RUNNING trials whose process is gone: heartbeat older than the grace period, or dead pid here."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        stale = set(self.storage._get_stale_trial_ids(study._study_id))
        grace = datetime.timedelta(seconds=self.spec.heartbeat.grace_period)
        for trial in running:
            if trial._trial_id in stale:
                reason = HEARTBEAT_LOST
            elif _owner_is_dead(trial.user_attrs.get(OWNER)):
                reason = WORKER_DIED
            elif OWNER not in trial.user_attrs and trial.datetime_start is not None \
                    and datetime.datetime.now() - trial.datetime_start > grace:
                reason = NEVER_STARTED
            else:
                continue
            try:
                self.storage.set_trial_user_attr(trial._trial_id, "failure", reason)
                if not self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:
                continue  # it finished, or another process reaped it first
            self.echo(f"[{phase.name}] trial {trial.number} (point {trial.user_attrs.get(POINT)}) failed: {reason}; "
                      "its point will be retried")
            self.listener.on_trial_reaped(phase, self.storage.get_trial(trial._trial_id), reason)

    # ---- running ---------------------------------------------------------------------------------------------

    def _suggest(self, trial: optuna.Trial, phase: PhaseSpec, study: optuna.Study) -> dict[str, Any]:
        if phase.sampler == "grid":
            grid = study.user_attrs[ATTR + "grid"]
            return {name: decode_param(trial.suggest_categorical(name, [encode_param(v) for v in values]))
                    for name, values in grid.items()}
        params = {}
        for name, p in phase.space.items():
            if p.type == "categorical":
                params[name] = decode_param(trial.suggest_categorical(name, [encode_param(c) for c in p.choices]))
            elif p.type == "int":
                params[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                params[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        return params

    def _run_trial(self, phase: PhaseSpec, study: optuna.Study, trial: optuna.Trial) -> None:
        frozen = self.storage.get_trial(trial._trial_id)
        point = frozen.user_attrs.get(POINT, trial.number)
        seed = grids.trial_seed(self.spec.seed, phase.name, point)
        try:
            trial.set_user_attr("seed", seed)
        except UpdateFinishedTrialError:
            return  # reaped between the claim and now: its point was handed on
        reason: str | None = None
        result = None
        history: dict[str, list[Any]] = {}
        with _heartbeat(self.storage, trial._trial_id, self.spec.heartbeat.interval):
            try:
                params = self._suggest(trial, phase, study)
                config = resolved_config(self.spec, params)
                frozen = self.storage.get_trial(trial._trial_id)
                self.listener.on_trial_start(phase, frozen, config, seed, self._replaced(study, frozen))

                pruning = self.spec.pruner.type != "none"

                def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
                    for key in EPOCH_KEYS:
                        history.setdefault(key, []).append(metrics.get(key))
                    self.listener.on_epoch(phase, frozen, epoch, metrics)
                    # each report is a storage write: only a pruner needs them (the history is stored at the end)
                    if pruning:
                        trial.report(metrics[self.spec.objective.metric], epoch)
                        if trial.should_prune():
                            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

                result = train_once(self.spec, self.data, params, seed=seed, on_epoch=on_epoch)
                state, values = TrialState.COMPLETE, [result.val_acc]
            except optuna.TrialPruned as exc:
                state, values, reason = TrialState.PRUNED, None, str(exc) or "pruned"
            except DivergedError as exc:
                state, values, reason = TrialState.PRUNED, None, f"diverged: {exc}"
            except KeyboardInterrupt:
                self._finish(phase, study, trial, TrialState.FAIL, None, None, INTERRUPTED, history)
                raise
            except Exception as exc:  # a failing trial must not stop the study; the point is retried
                state, values, reason = TrialState.FAIL, None, f"{type(exc).__name__}: {exc}"
        self._finish(phase, study, trial, state, values, result, reason, history)

    def _replaced(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
        """The latest earlier trial of the same point, which this one retries."""
        point = trial.user_attrs.get(POINT)
        if point is None:
            return None
        earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                   if t.user_attrs.get(POINT) == point and t.number < trial.number]
        return earlier[-1] if earlier else None

    def _finish(self, phase: PhaseSpec, study: optuna.Study, trial: optuna.Trial, state: TrialState,
                values: list[float] | None, result: Any, reason: str | None, history: dict[str, list[Any]]) -> None:
        try:
            if history:
                trial.set_user_attr("epoch_history", history)
            if result is not None:
                trial.set_user_attr("train_acc", result.train_acc)
                trial.set_user_attr("seconds", round(result.seconds, 3))
                trial.set_user_attr("final_loss", result.loss)
            if reason:
                trial.set_user_attr("failure", mask_url(reason))
            if self.storage.get_trial(trial._trial_id).state.is_finished():
                raise UpdateFinishedTrialError("already finished")
            study.tell(trial, values=values, state=state)
        except UpdateFinishedTrialError:
            self.echo(f"[{phase.name}] trial {trial.number}: result discarded, the trial was already failed "
                      "(its point was handed to another worker)")
            return
        finished = self.storage.get_trial(trial._trial_id)
        status = self._phase_status(phase, study)
        best = self._best_trial()
        progress = {**status, "study_best_value": best[1].value if best else None}
        self.listener.on_trial_end(phase, finished, result, reason, progress)
        self._report_trial(phase, study, finished, status)

    def _report_trial(self, phase: PhaseSpec, study: optuna.Study, trial: FrozenTrial, status: dict[str, Any]) -> None:
        if trial.state == TrialState.COMPLETE:
            score = f"{self.spec.objective.metric} {trial.value:.4f}"
        else:
            score = trial.state.name + (f" ({trial.user_attrs['failure']})" if trial.user_attrs.get("failure") else "")
        best = f"best {status['best_value']:.4f}" if status["best_value"] is not None else "best -"
        done, total = status["done"], status["total"]
        eta = ""
        seconds = [t.duration.total_seconds() for t in study.get_trials(deepcopy=False, states=FINISHED)
                   if t.duration is not None]
        if seconds and total > done:
            eta = f", ETA {_format_seconds((total - done) * sum(seconds) / len(seconds))}"
        self.echo(f"[{phase.name}] {done}/{total} trial {trial.number} {score}, {best}{eta}")

    def _run_points_phase(self, phase: PhaseSpec, study: optuna.Study, budget: Budget) -> bool:
        points = self._points(phase, study)
        while True:
            self._reap(phase, study)
            self._reconcile(phase, study, points)
            if budget.exhausted():
                return False
            trial_id = self._claim(study, len(points))
            if trial_id is None:
                if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    time.sleep(POLL_SECONDS)  # another process holds the last points
                    continue
                if self._reconcile(phase, study, points):
                    continue  # a trial failed since the last look: its retry was just queued
                return True
            budget.trials += 1
            self._run_trial(phase, study, optuna.Trial(study, trial_id))

    def _run_sampled_phase(self, phase: PhaseSpec, study: optuna.Study, budget: Budget) -> bool:
        """TPE: trials are sampled one by one from the history, until n_trials are COMPLETE or PRUNED."""
        while True:
            self._reap(phase, study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            failures = sum(self._counts_as_failure(t) for t in trials)
            if finished >= phase.n_trials:
                return True
            if failures > phase.max_retries * phase.n_trials:
                self.echo(f"[{phase.name}] giving up after {failures} failed trials")
                return True
            if finished + running >= phase.n_trials:
                time.sleep(POLL_SECONDS)
                continue
            if budget.exhausted():
                return False
            trial = self._ask(phase, study)
            if trial is None:
                continue
            budget.trials += 1
            self._run_trial(phase, study, trial)

    def _ask(self, phase: PhaseSpec, study: optuna.Study) -> optuna.Trial | None:
        """A new TPE trial, unless the phase's n_trials are already finished or running (under the lock)."""
        with storage_lock(self.url, f"{study.study_name}:claim"):
            trials = study.get_trials(deepcopy=False)
            taken = sum(t.state in FINISHED or t.state == TrialState.RUNNING for t in trials)
            if taken >= phase.n_trials:
                return None
            # a resumed phase must not replay its first draws; parallel workers must not draw alike
            parallel = any(t.state == TrialState.RUNNING for t in trials)
            study.sampler = self._sampler(phase, len(trials) * 100_003 + (os.getpid() if parallel else 0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": we beat ourselves
                trial = study.ask()
            self._own(trial._trial_id)
            return trial

    @_storage_failures
    def run(self, budget: Budget | None = None, only_phase: str | None = None) -> dict[str, Any]:
        """Run the phases in order until done or out of budget. Returns the summary (see :meth:`status`)."""
        budget = budget or Budget()
        if not self.spec.phases:
            raise SpecError(f"{self.spec.source}: the spec has no phases to run; add 'phases' "
                            "(or use 'hpsearch train' to train the defaults once).")
        phases = [self.spec.phase(only_phase)] if only_phase else self.spec.phases
        self.data  # noqa: B018 - load (and validate) the data before touching the storage
        self._check_points(phases)
        registry = self._registry(create=True)
        self._check_context(registry)
        changed = []
        with storage_lock(self.url, f"{self.spec.name}:phases"):  # consistent with a concurrent _open_phase
            for phase in phases:
                existing = self._load_phase(phase, registry)
                if existing is not None and self._definition_changes(phase, existing):
                    changed.append(phase.name)
        before = self.status()
        if before["complete"] and not only_phase and not changed:
            self.echo(f"Study {self.spec.name!r} is already complete: nothing to run.")
            return before
        self.listener.on_study_start(self.spec, SharedState(self.url, self.spec.name))
        self._mend_listener()
        try:
            complete = self._run_phases(registry, phases, budget)
        except BaseException:
            # an interrupted or failing run sends what it can in a few seconds; the next run mends the rest
            self.listener.close(timeout=10)
            raise
        report = self._finalise(registry) if complete and not only_phase else None
        summary = self.status()
        if report is not None:
            report.summary = summary
        self._mend_listener()  # trials of workers that died before they could log them
        self.listener.on_study_end(summary, report)
        return summary

    def _mend_listener(self) -> None:
        stored = self.trials()
        if stored:
            self.listener.on_existing_trials(stored, {row["phase"]: {"study_name": row["optuna_study"]}
                                                      for row in stored})

    def _run_phases(self, registry: optuna.Study, phases: list[PhaseSpec], budget: Budget) -> bool:
        """Run ``phases`` in order; False when the budget ran out first."""
        with _signals_interrupt():
            for phase in phases:
                study = self._open_phase(registry, phase)
                info = {"study_name": study.study_name, "grid": study.user_attrs.get(ATTR + "grid")}
                self.listener.on_phase_start(phase, info)
                runner = self._run_sampled_phase if phase.sampler == "tpe" else self._run_points_phase
                done = runner(phase, study, budget)
                status = self._phase_status(phase, study)
                self.listener.on_phase_end(phase, status)
                if not done:
                    self.echo(f"Budget reached during phase {phase.name!r}; rerun the same command to resume.")
                    return False
        return True

    @_storage_failures
    def prepare(self) -> None:
        """Settle, once, which Optuna studies serve the phases: with --force-new-phase, give every changed phase a
        fresh study. Workers started afterwards (without the flag) then find nothing changed."""
        registry = self._registry(create=True)
        self._check_context(registry)
        with storage_lock(self.url, f"{self.spec.name}:phases"):
            phases = dict(registry.user_attrs.get(ATTR + "phases") or {})
            for phase in self.spec.phases:
                existing = self._load_phase(phase, registry)
                if existing is not None and self._definition_changes(phase, existing):
                    phases[phase.name] = self._next_version(phase)
            registry.set_user_attr(ATTR + "phases", phases)

    def _check_points(self, phases: list[PhaseSpec]) -> None:
        """Refuse, before anything runs, explicit points no trial could train with."""
        n = len(self.data.y_train)
        for phase in phases:
            sizes = (phase.grid or {}).get("batch_size", []) if isinstance(phase.grid, dict) else []
            space = phase.space.get("batch_size")
            if space is not None:
                sizes = space.choices if space.type == "categorical" else [space.high]
            sizes = [*sizes, self.spec.defaults.get("batch_size", 0)]
            too_big = [s for s in sizes if isinstance(s, (int, float)) and s > n]
            if too_big:
                raise SpecError(f"{self.spec.source}: phase {phase.name!r}: batch_size {too_big[0]} is larger "
                                f"than the training split ({n} samples).")

    # ---- results ---------------------------------------------------------------------------------------------

    def _best_trial(self) -> tuple[PhaseSpec, FrozenTrial] | None:
        best: tuple[PhaseSpec, FrozenTrial] | None = None
        sign = 1 if self.spec.objective.direction == "maximize" else -1
        registry = self._registry(create=False)
        for phase in self.spec.phases:
            study = self._load_phase(phase, registry)
            if study is None:
                continue
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if trial.value is None or not math.isfinite(trial.value):
                    continue
                if best is None or sign * trial.value > sign * best[1].value:
                    best = (phase, trial)
        return best

    def _finalise(self, registry: optuna.Study) -> StudyReport | None:
        """Retrain the winner with its own seed, evaluate it once on the test split, store and report the result.

        Once per study: of several workers finishing together, the first does it and the others return None.
        """
        with storage_lock(self.url, f"{self.spec.name}:finalise"):
            found = self._best_trial()
            stored = registry.user_attrs.get(ATTR + "result") or {}
            if found is not None and (stored.get("phase"), stored.get("trial")) == (found[0].name, found[1].number):
                return None
            return self._finalise_once(registry)

    def _finalise_once(self, registry: optuna.Study) -> StudyReport | None:
        report = self.report()
        if report is None or report.best is None:
            return report
        best, retrained = report.best, report.best_result
        result = {"phase": best["phase"], "trial": best["trial"], "value": best["value"],
                  "test_acc": None, "retrained_val_acc": retrained.val_acc,
                  "data_fingerprint": self.data.fingerprint}
        if self.data.X_test is not None:
            result["test_acc"] = retrained.model.accuracy(self.data.X_test, self.data.y_test)
        stored = registry.user_attrs.get(ATTR + "result") or {}
        if {k: stored.get(k) for k in result} != result:
            registry.set_user_attr(ATTR + "result", result)
        report.best = self.best()
        report.best_fragment = best_fragment(self.spec, report.best)
        return report

    @_storage_failures
    def report(self, retrain: bool = True) -> StudyReport | None:
        """Plain data for plots and summaries; retrains the best trial for its curves and model."""
        registry = self._registry(create=False)
        if registry is None:
            return None
        best = self.best()
        best_result = None
        if best is not None and retrain:
            best_result = train_once(self.spec, self.data, best["params"], seed=best["seed"])
        spaces: dict[str, dict[str, bool]] = {}
        importances: dict[str, dict[str, float]] = {}
        for phase in self.spec.phases:
            study = self._load_phase(phase, registry)
            if study is None:
                continue
            grid = study.user_attrs.get(ATTR + "grid")
            spaces[phase.name] = ({name: p.log for name, p in phase.space.items()} if phase.space else
                                  {name: _looks_logarithmic(values) for name, values in (grid or {}).items()
                                   if len(values) > 1})
            importances[phase.name] = _importances(study)
        return StudyReport(
            study=self.spec.name, metric=self.spec.objective.metric, direction=self.spec.objective.direction,
            trials=self.trials(), spaces=spaces, importances=importances, best=best, best_result=best_result,
            best_fragment=best_fragment(self.spec, best) if best else None, summary=self.status(),
        )

    def _phase_status(self, phase: PhaseSpec, study: optuna.Study | None) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": phase.name, "sampler": phase.sampler, "state": "pending",
                                  "study_name": study.study_name if study is not None else None,
                                  "complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0,
                                  "done": 0, "total": None, "best_value": None, "best_trial": None,
                                  "failed_points": [], "grid": None}
        if study is None:
            if phase.sampler != "grid" or isinstance(phase.grid, dict):
                status["total"] = phase.n_trials or len(grids.grid_points(phase.grid))
            return status
        trials = study.get_trials(deepcopy=False)
        for key, state in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                           ("failed", TrialState.FAIL), ("running", TrialState.RUNNING),
                           ("waiting", TrialState.WAITING)):
            status[key] = sum(t.state == state for t in trials)
        points = self._points(phase, study)
        if points is None:
            status["total"] = phase.n_trials
            status["done"] = status["complete"] + status["pruned"]
            done = status["done"] >= phase.n_trials
        else:
            status["total"] = len(points)
            covered: set[int] = set()
            failures: dict[int, int] = {}
            for t in trials:
                point = t.user_attrs.get(POINT)
                if point is None or point >= len(points):
                    continue
                if t.state in FINISHED:
                    covered.add(point)
                elif self._counts_as_failure(t):
                    failures[point] = failures.get(point, 0) + 1
            status["done"] = len(covered)
            status["failed_points"] = sorted(p for p, n in failures.items()
                                             if n > phase.max_retries and p not in covered)
            done = len(covered) + len(status["failed_points"]) >= len(points)
            status["grid"] = study.user_attrs.get(ATTR + "grid")
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                    and math.isfinite(t.value)]
        if complete:
            pick = max if self.spec.objective.direction == "maximize" else min
            best = pick(complete, key=lambda t: t.value)
            status["best_value"], status["best_trial"] = best.value, best.number
        status["state"] = "complete" if done and not status["running"] else "running" if trials else "pending"
        if not done and trials and not status["running"]:
            status["state"] = "incomplete"
        return status

    @_storage_failures
    def status(self) -> dict[str, Any]:
        """Per phase: state, trial counts, grid coverage, best; and the winner with its test accuracy."""
        registry = self._registry(create=False)
        phases = [self._phase_status(p, self._load_phase(p, registry) if registry else None)
                  for p in self.spec.phases]
        result = (registry.user_attrs.get(ATTR + "result") if registry else None) or None
        complete = bool(phases) and all(p["state"] == "complete" for p in phases) and result is not None
        return {"study": self.spec.name, "storage": mask_url(self.url), "complete": complete,
                "phases": phases, "best": self.best() if registry else None}

    @_storage_failures
    def best(self) -> dict[str, Any] | None:
        """The best trial over all phases, with everything needed to train it again."""
        found = self._best_trial()
        if found is None:
            return None
        phase, trial = found
        registry = self._registry(create=False)
        result = registry.user_attrs.get(ATTR + "result") or {}
        same = result.get("phase") == phase.name and result.get("trial") == trial.number
        return {
            "phase": phase.name, "trial": trial.number, "value": trial.value,
            "metric": self.spec.objective.metric, "params": decode_params(trial.params),
            "config": resolved_config(self.spec, decode_params(trial.params)), "seed": trial.user_attrs.get("seed"),
            "test_acc": result.get("test_acc") if same else None,
            "data_fingerprint": result.get("data_fingerprint") if same else None,
        }

    @_storage_failures
    def trials(self) -> list[dict[str, Any]]:
        """Every trial of every phase: phase, number, state, value, params, duration and bookkeeping."""
        rows = []
        registry = self._registry(create=False)
        for phase in self.spec.phases:
            study = self._load_phase(phase, registry) if registry else None
            if study is None:
                continue
            for t in study.get_trials(deepcopy=False):
                rows.append({
                    "phase": phase.name, "number": t.number, "state": t.state.name,
                    "value": t.value if t.state == TrialState.COMPLETE else None,
                    "params": decode_params(t.params), "duration_seconds": t.duration.total_seconds() if t.duration else None,
                    "point": t.user_attrs.get(POINT), "attempt": t.user_attrs.get(ATTEMPT),
                    "seed": t.user_attrs.get("seed"), "failure": t.user_attrs.get("failure"),
                    "epoch_history": t.user_attrs.get("epoch_history"), "optuna_study": study.study_name,
                    "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                })
        return rows


def _looks_logarithmic(values: list[Any]) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def _importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the searched parameters; empty when too few trials vary."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # a single distinct value, or no parameter varies
        return {}


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
