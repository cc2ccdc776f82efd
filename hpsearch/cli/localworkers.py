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
from collections.abc import Sequence

from hpsearch.engine.interrupt import SIGNALS, started_without_signals
from hpsearch.errors import UserError

__all__ = ["MAX_WORKERS", "STOPPED_FD", "WORKERS_PER_CORE", "cgroup_cpu_quota", "check_workers", "report_stopped",
           "run_workers", "spawn", "unblock_signals", "usable_cores"]

STOPPED_FD = "HPSEARCH_STOPPED_FD"

# workers are processes sharing the cores (hpsearch.engine.resources): past a few per core they only add memory,
# connections and contention (a 2-core machine runs 16 workers at 1.28x one worker), and a mistyped count can fork
# the machine to its knees, so the bound follows the machine; --allow-many-workers lifts it to the ceiling, never
# past it
WORKERS_PER_CORE = 4
MAX_WORKERS = 1024


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
    with os.fdopen(read_end, encoding="utf-8", errors="replace") as pipe:
        stopped = [line.rstrip("\n") for line in pipe if line.strip()]
    return codes, bool(received), stopped


def unblock_signals() -> int | None:
    """In a worker of ``run --workers``, once its signal handlers are installed: take the signals it started with
    blocked (see :func:`spawn`), and the pipe it reports stopped trials to (out of the environment, so that nothing
    the worker starts writes to it); the pipe's descriptor, None in any other process."""
    fd = os.environ.pop(STOPPED_FD, None)
    if fd is None:
        return None
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    try:
        return int(fd) if stat.S_ISFIFO(os.fstat(int(fd)).st_mode) else None
    except (OSError, ValueError):
        return None


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
