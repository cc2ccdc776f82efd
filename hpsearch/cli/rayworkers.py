"""``run --ray ADDRESS --workers N``: Ray places the workers, each a Ray task that runs ``hpsearch worker``.

Ray only places and isolates processes: the study's truth stays in its storage, where a worker Ray placed claims
its points as any other worker does. So a task Ray runs again after its worker process or node was lost, or one
cancelled mid-trial, leaves every point finished exactly once. Each task asks Ray for one worker's share
(``num_cpus`` its threads, ``num_gpus`` its GPUs, for which Ray sets the task's ``CUDA_VISIBLE_DEVICES``) and runs
the worker as a process of its own, as ``run --workers`` does: its thread counts are set before its libraries start,
it stops on SIGTERM as any worker does (ending its trial as interrupted), and it gets that SIGTERM when the Ray
worker process that started it is killed. Nothing imports Ray unless ``--ray`` is given.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from hpsearch.cli.localworkers import MAX_WORKERS, PARENT_PID, STOPPED_FD, read_stopped, worker_command
from hpsearch.cli.placement import WorkersEnded
from hpsearch.cli.options import echo_err
from hpsearch.engine.interrupt import SIGNALS
from hpsearch.errors import UserError, first_line

if TYPE_CHECKING:
    from hpsearch.engine.resources import WorkerResources
    from hpsearch.spec.models import StudySpec

__all__ = ["FORWARDED", "LOCAL", "Outcome", "RayCluster", "RayWorkers", "connect", "worker_task"]

T = TypeVar("T")
LOCAL = "local"  # --ray local: a Ray instance started for this run, on this machine, ended with it
# what a worker on another node needs from this process's environment besides the storage URL: the passwords and
# MLflow settings the user gave here (a Ray worker's own environment is its node's)
FORWARDED = ("PGPASSWORD", "PGPASSFILE", "PGSSLMODE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
             "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS")
RETRIES = 3  # times Ray starts a task again whose worker process or node was lost (Ray's own default)
TAIL_LINES = 5  # lines of a failed worker's standard error the task hands back
CONNECT_SECONDS = 5  # for the cluster's address to take a connection at all
WAIT_STEP = 0.5  # seconds between two looks at the tasks, for a signal to be taken up
ANSWER_SECONDS = 60  # for Ray to connect there (a cluster answers in seconds; a token refused takes about 20)


@dataclass(frozen=True)
class RayCluster:
    """The alive nodes of the Ray cluster this process is connected to: each one's CPUs and GPUs."""

    address: str
    nodes: tuple[tuple[float, float], ...]

    @property
    def cpus(self) -> float:
        return sum(cpus for cpus, _ in self.nodes)


@dataclass(frozen=True)
class Outcome:
    """What one worker task ended with: its worker's exit code (None: the task never ran, or Ray gave up on it),
    the trials a signal stopped, the node it ran on, and its last lines of standard error when it failed."""

    code: int | None
    stopped: list[str]
    node: str
    tail: list[str]


def connect(address: str, *, cpus: int | None = None, gpus: tuple[str, ...] | None = None,
            check: Callable[[], None] = lambda: None) -> RayCluster:
    """Connect this process to the Ray cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:10001``), or
    start one on this machine for this run (``local``, with ``cpus`` and the GPUs ``gpus`` names); UserError (one
    line) without Ray installed, or where no cluster answers within :data:`ANSWER_SECONDS`.

    Ray waits for a cluster's address without end, in code that no signal interrupts, so it is asked from a thread
    of its own while this one waits, calling ``check`` (which raises on Ctrl-C) as it does."""
    import logging

    if address != LOCAL:
        _check_reachable(address)
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray {address}: Ray is not installed here; pip install 'hpsearch[ray]'.") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would otherwise ask to send usage data home
    options: dict[str, Any] = {"logging_level": logging.ERROR, "include_dashboard": False}  # its notices: noise here
    if address == LOCAL:
        options.update(num_cpus=cpus, num_gpus=len(gpus) if gpus else 0)
    failed: list[BaseException] = []
    done = threading.Event()

    def init() -> None:
        try:
            ray.init(address=address, **options)
        except BaseException as exc:  # noqa: BLE001 - said in the calling thread
            failed.append(exc)
        finally:
            done.set()

    if address == LOCAL:  # in this thread: the kernel ends the processes Ray starts with the thread that started them
        with _as_before(gpus):
            init()
    else:
        threading.Thread(target=init, name="hpsearch-ray-init", daemon=True).start()
    deadline = time.monotonic() + ANSWER_SECONDS
    while not done.wait(0.2):
        check()
        if time.monotonic() > deadline:
            raise UserError(f"--ray {address}: no Ray cluster answered there within {ANSWER_SECONDS} s (is it Ray's "
                            "GCS port, 6379 by default?). Give the cluster's address (auto, HOST:6379, "
                            "ray://HOST:10001), or use --ray local.")
    if failed:
        exc = failed[0]
        while exc.__cause__ is not None:  # Ray's own reason (a missing token, say) is the first cause
            exc = exc.__cause__
        raise UserError(f"--ray {address}: no Ray cluster answers there ({first_line(exc)}). Start one "
                        "(ray start --head), give its address (auto, HOST:6379, ray://HOST:10001), or use --ray local.")
    nodes = tuple((float(node["Resources"].get("CPU", 0)), float(node["Resources"].get("GPU", 0)))
                  for node in ray.nodes() if node.get("Alive"))
    return RayCluster(address, nodes)


@contextlib.contextmanager
def _as_before(gpus: tuple[str, ...] | None) -> Iterator[None]:
    """While a local instance starts: ``CUDA_VISIBLE_DEVICES`` set to the GPUs it hands out (a slice to each task),
    and afterwards this process's own again, with its own handlers of SIGINT and SIGTERM (Ray puts its own in)."""
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible


def _check_reachable(address: str) -> None:
    """UserError (one line) where nothing listens at the cluster's HOST:PORT (``auto``: $RAY_ADDRESS, where set):
    Ray would wait for it for many minutes, deaf to Ctrl-C."""
    given = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    host, colon, port = given.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit() or not host:
        return  # auto without $RAY_ADDRESS, or an address Ray will say is malformed
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UserError(f"--ray {address}: nothing answers at {host}:{port} ({reason}). Start the cluster (ray start "
                        "--head) or give its address (HOST:6379, ray://HOST:10001), or use --ray local.") from None


def worker_task(args: list[str], env: dict[str, str], folder: str) -> Outcome:
    """In a Ray worker: run ``hpsearch ARGS`` (a ``worker`` command) to its end, with ``env`` added to this node's
    environment, in ``folder`` (the calling process's working directory) where this node has it. Cancelled (Ray raises
    KeyboardInterrupt here, at any instruction, and again while the task has not answered), it stops the worker as
    Ctrl-C stops one and waits for it."""
    read_end, write_end = os.pipe()
    process: subprocess.Popen | None = None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    copier = threading.Thread(target=lambda: _copy_lines(process, tail), name="hpsearch-stderr", daemon=True)
    try:
        try:
            # held back in this thread while the worker starts: it unblocks them once its own handlers are in place.
            # Not started from a thread of its own (as run --workers starts them): the kernel signals a child when
            # the thread that started it ends, not the process
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            try:
                process = subprocess.Popen(worker_command(args), env={**os.environ, **env, STOPPED_FD: str(write_end),
                                                                      PARENT_PID: str(os.getpid())},
                                           cwd=folder if os.path.isdir(folder) else None, pass_fds=(write_end,),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                           errors="replace")
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                os.close(write_end)
            copier.start()
            code = _wait(process)
        except KeyboardInterrupt:  # ray.cancel: stop the worker as a signal stops any, and let it end its trial
            if process is None:  # cancelled before its worker started
                for fd in (read_end, write_end):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                return Outcome(None, [], socket.gethostname(), [])
            process.send_signal(signal.SIGTERM)
            code = _wait(process, cancelled=True)
        if copier.ident is not None:  # started: it ends with the worker's standard error
            _uninterrupted(copier.join)
        stopped = _uninterrupted(lambda: read_stopped(read_end))
    finally:
        if process is not None and process.stderr is not None:
            process.stderr.close()
    return Outcome(code, stopped, socket.gethostname(), list(tail) if code not in (0, 130) else [])


def _uninterrupted(step: Callable[[], T]) -> T:
    """``step()`` to its end, though Ray repeats a cancellation the task already took up."""
    while True:
        try:
            return step()
        except KeyboardInterrupt:
            continue


def _wait(process: subprocess.Popen, cancelled: bool = False) -> int:
    """The process's exit code. Waited for in short steps: Ray delivers a cancellation between two of Python's
    instructions, never inside a blocking wait. Once ``cancelled``, a second cancellation only waits on."""
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            if not cancelled:
                raise


def _copy_lines(process: subprocess.Popen | None, tail: collections.deque[str]) -> None:
    """The worker's standard error line by line to this task's (which Ray shows where ``run --ray`` was started),
    its last lines kept."""
    assert process is not None and process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line.rstrip("\n"))


class RayWorkers:
    """``workers`` worker tasks on the Ray cluster at ``address``; ``gpus`` (``--gpus``, with ``local`` only) the
    GPUs of the instance started here, ``threads`` (``--threads``) each worker's CPUs and threads."""

    def __init__(self, address: str, workers: int, gpus: tuple[str, ...] | None, threads: int | None) -> None:
        if not address.strip():
            raise UserError("--ray must name a Ray cluster (auto, HOST:PORT, ray://HOST:10001) or be local. Got '' "
                            "instead.")
        if workers > MAX_WORKERS:
            raise UserError(f"--workers must be at most {MAX_WORKERS}. Got {workers} instead.")
        if gpus is not None and address != LOCAL:
            raise UserError(f"--gpus names GPUs of this machine, for the Ray instance --ray local starts; the GPUs of "
                            f"the cluster at {address} are Ray's to hand out: ask for them with "
                            "resources.gpus_per_worker.")
        self.address, self.workers, self.gpus, self.threads = address, workers, gpus, threads
        self.share: WorkerResources | None = None
        self.gpus_per_worker = 0
        self.connected = False

    def plan(self, study: StudySpec, storage_url: str, check: Callable[[], None] = lambda: None) -> None:
        """Connect to the cluster (or start the local instance) and size each worker's task to its nodes; ``check``
        raises where a signal came meanwhile."""
        from hpsearch.cli.localworkers import usable_cores
        from hpsearch.engine.resources import check_within, plan_cluster_workers
        from hpsearch.storage.urls import mask_url, sqlite_path

        if self.address != LOCAL and sqlite_path(storage_url) is not None:
            raise UserError(f"--ray {self.address}: the storage {mask_url(storage_url)!r} is a SQLite file on this "
                            "machine, which workers on other machines cannot share; give a PostgreSQL --storage (or "
                            "$HPSEARCH_STORAGE), or use --ray local.")
        asked = study.resources
        self.gpus_per_worker = asked.gpus_per_worker if asked.gpus_per_worker is not None else (1 if self.gpus else 0)
        if self.gpus is not None and self.gpus_per_worker == 0:
            raise UserError("--gpus hands out GPUs, and resources.gpus_per_worker is 0: leave out one or the other.")
        if self.gpus:
            check_within(self.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        cluster = connect(self.address, cpus=usable_cores(), gpus=self.gpus, check=check)
        self.connected = True
        self.share, at_once = plan_cluster_workers(self.workers, cluster.nodes,
                                                   threads=self.threads or asked.threads_per_worker,
                                                   gpus_per_worker=self.gpus_per_worker)
        gpus = f", {self.gpus_per_worker} GPU{'s' if self.gpus_per_worker != 1 else ''}" if self.gpus_per_worker else ""
        echo_err(f"Ray workers: {self.workers}, each {self.share.describe()}{gpus}, on {len(cluster.nodes)} "
                 f"node{'s' if len(cluster.nodes) != 1 else ''} ({cluster.cpus:g} CPUs)")
        if at_once < self.workers:
            echo_err(f"warning: the cluster runs {at_once} of the {self.workers} workers at a time; the others start "
                     "as those end.")

    def check_tracking(self, tracking_uri: str | None) -> None:
        from hpsearch.storage.urls import mask_url

        machines_own = tracking_uri is not None and (tracking_uri.startswith(("sqlite:", "file:"))
                                                     or "://" not in tracking_uri)  # a path
        if self.address == LOCAL or not machines_own:
            return
        echo_err(f"warning: MLflow tracking goes to {mask_url(tracking_uri)}, a file of each machine's own: workers "
                 "on other nodes log there on their own node. Give --tracking-uri http://HOST:5000 (an MLflow "
                 "server) to see every trial in one place.")

    def run(self, args: list[str], env: dict[str, str]) -> WorkersEnded:
        """Run the tasks to their end. SIGINT or SIGTERM cancels every task: each stops its worker, which ends its
        trial as interrupted."""
        import ray

        assert self.share is not None, "plan() first"
        task = ray.remote(worker_task).options(name="hpsearch-worker", num_cpus=self.share.threads,
                                               num_gpus=self.gpus_per_worker, max_retries=RETRIES)
        env = {**{name: os.environ[name] for name in FORWARDED if name in os.environ}, **env, **self.share.env()}
        received: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in SIGNALS}
        try:
            # the spec by its full path: a node without the calling shell's working directory still finds it
            args = [args[0], os.path.abspath(args[1]), *args[2:]]
            refs = [task.remote(args, env, os.getcwd()) for _ in range(self.workers)]
            pending = list(refs)
            while pending and not received:  # in steps: a signal's handler runs between them
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_STEP)
            if received:  # cancel every task: each stops its worker, which ends its trial as interrupted
                for sig in SIGNALS:  # winding down: a second Ctrl-C must not cut the tasks' ending short
                    signal.signal(sig, signal.SIG_IGN)
                for ref in refs:
                    ray.cancel(ref)
            outcomes = [_outcome(ref, ray) for ref in refs]
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        ended: dict[tuple[int | None, str], list[str]] = {}  # the same error of several workers is said once
        for outcome in outcomes:
            if outcome.tail:
                ended.setdefault((outcome.code, outcome.tail[-1]), []).append(outcome.node or "lost")
        notes = [f"{len(nodes)} worker{'s' if len(nodes) != 1 else ''} ({', '.join(sorted(set(nodes)))}) ended "
                 f"{f'with exit code {code}' if code is not None else 'without an exit code'}: {line}"
                 for (code, line), nodes in ended.items()]
        return WorkersEnded([outcome.code for outcome in outcomes], bool(received),
                            [trial for outcome in outcomes for trial in outcome.stopped], notes)

    def close(self) -> None:
        """End this process's connection to Ray (and the instance ``--ray local`` started)."""
        if self.connected:
            import ray

            ray.shutdown()
            self.connected = False


def _outcome(ref: Any, ray: Any) -> Outcome:
    """A task's outcome: what it returned once its worker ended; no exit code where it was cancelled before it
    started, or where Ray gave up on it (its retries spent: Ray's reason kept)."""
    from ray.exceptions import RayError, RayTaskError, TaskCancelledError

    try:
        return ray.get(ref)
    except TaskCancelledError:
        return Outcome(None, [], "", [])
    except RayError as exc:
        reason = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
        return Outcome(None, [], "", [first_line(reason)])
