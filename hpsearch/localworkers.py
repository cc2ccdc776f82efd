"""``run --workers N`` on one machine: bound N, start the worker processes, forward SIGINT/SIGTERM to them, wait."""

from __future__ import annotations

import os
import signal
import subprocess

from hpsearch.errors import UserError

__all__ = ["MAX_WORKERS", "WORKERS_PER_CORE", "check_workers", "run_workers", "usable_cores"]

# workers are processes with a BLAS thread each: past a few per core they only add memory, connections and
# contention (a 2-core machine runs 16 workers at 1.28x one worker), and a mistyped count can fork the machine to
# its knees, so the bound follows the machine; --allow-many-workers lifts it to the ceiling, never past it
WORKERS_PER_CORE = 4
MAX_WORKERS = 1024


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


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


def run_workers(command: list[str], env: dict[str, str], workers: int) -> tuple[list[int], bool]:
    """Run ``workers`` copies of ``command``; returns the exit codes of those started and whether a signal stopped
    them.

    The workers start one at a time. A SIGINT or SIGTERM to this process stops the starting at once and goes to
    every worker started (each ends its trial as interrupted and exits), the one starting as it came included; this
    process waits for all of them, so none outlives it.
    """
    received: list[int] = []
    processes: list[subprocess.Popen] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(workers):
            if received:
                break
            told = len(received)
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            processes.append(process)
            if len(received) > told:  # it came while this one started, before the handler could see it
                process.send_signal(received[-1])
        codes = [process.wait() for process in processes]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return codes, bool(received)
