"""``run --workers N`` on one machine: bound N, start the worker processes, forward SIGINT/SIGTERM to them, wait.

An interrupted worker does not print its own "Interrupted" line: it writes the trials the signal stopped to a pipe
the parent handed it (``$HPSEARCH_STOPPED_FD``), and the parent says it once for all of them.
"""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpsearch.cli.options import echo_err
from hpsearch.cli.placement import WorkersEnded
from hpsearch.engine.interrupt import SIGNALS, started_without_signals
from hpsearch.errors import UserError

if TYPE_CHECKING:
    from hpsearch.engine.resources import WorkerResources
    from hpsearch.spec.models import StudySpec

__all__ = ["MAX_WORKERS", "PARENT_PID", "STOPPED_FD", "WORKERS_PER_CORE", "LocalWorkers", "cgroup_cpu_quota",
           "check_workers", "local_shares", "read_stopped", "report_stopped", "run_workers", "spawn", "unblock_signals",
           "usable_cores", "worker_command"]

STOPPED_FD = "HPSEARCH_STOPPED_FD"
PARENT_PID = "HPSEARCH_PARENT_PID"  # set by a Ray task (hpsearch.cli.rayworkers): the worker stops when it dies
PR_SET_PDEATHSIG = 1  # Linux's prctl option: the signal a process gets when the thread that started it ends

# workers are processes sharing the cores (hpsearch.engine.resources): past a few per core they only add memory,
# connections and contention (a 2-core machine runs 16 workers at 1.28x one worker), and a mistyped count can fork
# the machine to its knees, so the bound follows the machine; --allow-many-workers lifts it to the ceiling, never
# past it
WORKERS_PER_CORE = 4
MAX_WORKERS = 1024


@dataclass
class LocalWorkers:
    """``workers`` processes on this machine, each with its share of ``gpus`` (``--gpus``) and its ``threads``."""

    workers: int
    gpus: tuple[str, ...] | None
    threads: int | None
    shares: list[dict[str, str]] = field(default_factory=list)

    def plan(self, study: StudySpec, storage_url: str, check: Callable[[], None]) -> None:
        self.shares = [share.env() for share in local_shares(study, self.workers, self.gpus, self.threads)]

    def check_tracking(self, tracking_uri: str | None) -> None:
        pass  # the workers share this machine's files

    def run(self, args: list[str], env: dict[str, str]) -> WorkersEnded:
        codes, interrupted, stopped = run_workers(worker_command(args), {**os.environ, **env}, self.workers,
                                                  self.shares)
        return WorkersEnded(list(codes), interrupted, stopped)

    def close(self) -> None:
        pass


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system says (else the machine's count), and
    no more than its cgroup's CPU quota (a container started with ``--cpus 2`` on a 64-core host has 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota is not None else cores


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The CPUs the cgroup v2 quota allows this process, rounded up; None where there is no quota."""
    try:
        with open(path, encoding="ascii") as handle:
            limit, _, period = handle.read().partition(" ")
        if limit.strip() == "max":
            return None
        return max(1, math.ceil(int(limit) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def check_workers(workers: int, allow_many: bool) -> None:
    """Raise UserError (one line naming the bound and how to lift it) for more workers than this machine takes."""
    cores = usable_cores()
    bound = MAX_WORKERS if allow_many else min(WORKERS_PER_CORE * cores, MAX_WORKERS)
    if workers <= bound:
        return
    if allow_many:
        raise UserError(f"--workers must be at most {MAX_WORKERS}, even with --allow-many-workers. Got {workers} "
                        "instead.")
    raise UserError(f"--workers must be at most {bound} ({WORKERS_PER_CORE} for each of the {cores} cores this "
                    f"process may use); --allow-many-workers lifts the bound to {MAX_WORKERS}. Got {workers} instead.")


def spawn(command: list[str], env: dict[str, str], stdout: int | None = None) -> subprocess.Popen:
    """Start ``command`` with SIGINT and SIGTERM blocked in it (a mask survives exec: it unblocks them once its
    handlers are installed, see :func:`unblock_signals`, so Ctrl-C while its interpreter starts is no traceback),
    its standard output on ``stdout`` (a descriptor; default /dev/null), the descriptor $HPSEARCH_STOPPED_FD names
    open in it.

    It is started from a thread of its own that blocks the signals (see
    :func:`~hpsearch.engine.interrupt.started_without_signals`): blocked in this thread for each start instead, a
    SIGTERM that came meanwhile went to another thread (one of BLAS's), which could take it up only after the next
    worker had started."""
    keep = int(env[STOPPED_FD])
    return started_without_signals(lambda: subprocess.Popen(
        command, env=env, pass_fds=(keep,), stdout=subprocess.DEVNULL if stdout is None else stdout))


def run_workers(command: list[str], env: dict[str, str], workers: int,
                shares: Sequence[dict[str, str]] | None = None) -> tuple[list[int], bool, list[str]]:
    """Run ``workers`` copies of ``command``, the i-th with ``shares[i]`` added to ``env`` (its GPUs and threads);
    returns the exit codes of those started, whether a signal stopped them, and the trials the signal stopped while
    they trained.

    The workers start one at a time. A SIGINT or SIGTERM to this process stops the starting at once and goes to
    every worker started (each ends its trial as interrupted and exits); this process waits for all of them, so
    none outlives it.
    """
    received: list[int] = []
    processes: list[subprocess.Popen] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    read_end, write_end = os.pipe()
    previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
    try:
        try:
            for index in range(workers):
                if received:
                    break
                share = shares[index] if shares else {}
                processes.append(spawn(command, {**env, **share, STOPPED_FD: str(write_end)}))
                if received:  # it came while this one started, before it was in the list the handler signals
                    processes[-1].send_signal(received[-1])
        except OSError as exc:  # no more processes or memory: the ones started are stopped, not left behind
            forward(signal.SIGTERM, None)
            for process in processes:
                process.wait()
            raise UserError(f"--workers {workers}: started {len(processes)} of them, then the system refused "
                            f"another ({exc.strerror or exc}); ask for fewer.") from None
        finally:
            os.close(write_end)  # the workers hold it now: the pipe ends when the last of them exits
        codes = [process.wait() for process in processes]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return codes, bool(received), read_stopped(read_end)


def worker_command(args: Sequence[str]) -> list[str]:
    """``hpsearch ARGS`` run by this Python. -P: the working directory is not put first on sys.path, so a worker
    imports what the `hpsearch` command imports."""
    return [sys.executable, "-P", "-m", "hpsearch", *args]


def read_stopped(fd: int) -> list[str]:
    """The trials the workers said a signal stopped, one a line, from the read end of their pipe (closed here),
    once every worker has ended."""
    with os.fdopen(fd, encoding="utf-8", errors="replace") as pipe:
        return [line.rstrip("\n") for line in pipe if line.strip()]


def unblock_signals() -> int | None:
    """In a worker of ``run --workers``, once its signal handlers are installed: take the signals it started with
    blocked (see :func:`spawn`), and the pipe it reports stopped trials to (out of the environment, so that nothing
    the worker starts writes to it); the pipe's descriptor, None in any other process."""
    fd = os.environ.pop(STOPPED_FD, None)
    if fd is None:
        return None
    _stop_with_parent(os.environ.pop(PARENT_PID, None))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    try:
        return int(fd) if stat.S_ISFIFO(os.fstat(int(fd)).st_mode) else None
    except (OSError, ValueError):
        return None


def _stop_with_parent(parent: str | None) -> None:
    """In a worker a Ray task started (``parent`` that task's pid): SIGTERM, which ends the trial as interrupted,
    when the Ray worker process is killed (a signal, the out-of-memory killer), rather than training on as an
    orphan beside the worker Ray starts again; at once if it is already gone. Where Ray ends that process itself (a
    forced cancel), it kills its children with it, and the trial is reaped as any dead worker's. Linux only:
    elsewhere the trial is reaped too (at once on the same host, else after the heartbeat's grace period)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the request: the signal, pending until unblocked, comes now
        os.kill(os.getpid(), signal.SIGTERM)


def report_stopped(fd: int | None, stopped: list[str]) -> bool:
    """In a worker of ``run --workers`` (``fd`` from :func:`unblock_signals`): hand the trials a signal stopped to
    the parent, which says it once for all; False elsewhere."""
    if fd is None:
        return False
    try:
        os.write(fd, "".join(f"{trial}\n" for trial in stopped).encode())
    except OSError:
        return False
    return True


def local_shares(study: StudySpec, workers: int, gpus: tuple[str, ...] | None,
                 threads: int | None) -> list[WorkerResources]:
    """Each worker's GPUs and threads: ``--gpus`` and ``--threads`` over the spec's ``resources``; the GPUs PyTorch
    sees where the spec asks for GPUs and ``--gpus`` names none. UserError (one line) when they are too few or
    outside this process's own CUDA_VISIBLE_DEVICES; a warning for GPUs PyTorch does not see, or more threads asked
    for than there are cores."""
    from hpsearch.backends.torch_model import visible_gpus, visible_gpus_if_installed
    from hpsearch.engine.resources import check_within, plan_workers

    asked, source, cores = study.resources, "--gpus", usable_cores()
    threads = threads or asked.threads_per_worker
    if gpus is None and asked.gpus_per_worker:
        gpus, source = visible_gpus(), "PyTorch (the GPUs it sees here)"
    shares = plan_workers(workers, cores, gpus=gpus, gpus_per_worker=asked.gpus_per_worker, threads=threads,
                          source=source)
    if source == "--gpus" and gpus:
        check_within(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        seen = visible_gpus_if_installed()
        unseen = [gpu for gpu in gpus if seen is not None and gpu not in seen]
        if unseen:
            echo_err(f"warning: PyTorch sees {'GPU ' + ','.join(seen) if seen else 'no GPU'} here, not GPU "
                     f"{','.join(unseen)}; each worker gets the slice given all the same.")
    if threads is not None and threads * workers > cores:
        echo_err(f"warning: {workers} workers of {threads} threads each ask for {threads * workers} threads on "
                 f"{cores} cores; they will compete for them.")
    if shares[0].gpus is not None:
        echo_err("workers: " + "; ".join(f"{index} {share.describe()}" for index, share in enumerate(shares, 1)))
    return shares
