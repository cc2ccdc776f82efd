"""``run --workers N`` on one machine: start the worker processes, forward SIGINT/SIGTERM to them, wait.

An interrupted worker does not print its own "Interrupted" line: it writes the trials the signal stopped to a pipe
the parent handed it (``$HPSEARCH_STOPPED_FD``), and the parent says it once for all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["STOPPED_FD", "report_stopped", "run_workers"]

STOPPED_FD = "HPSEARCH_STOPPED_FD"


def run_workers(command: list[str], env: dict[str, str], workers: int) -> tuple[list[int], bool, list[str]]:
    """Run ``workers`` copies of ``command``; returns their exit codes, whether a signal stopped them, and the trials
    the signal stopped while they trained.

    A SIGINT or SIGTERM to this process goes to every worker (each ends its trial as interrupted and exits), also
    one that arrives while they start; this process waits for all of them, so none outlives it.
    """
    received: list[int] = []
    processes: list[subprocess.Popen] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    read_end, write_end = os.pipe()
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            processes += [subprocess.Popen(command, env={**env, STOPPED_FD: str(write_end)}, pass_fds=(write_end,),
                                           stdout=subprocess.DEVNULL) for _ in range(workers)]
        finally:
            os.close(write_end)  # the workers hold it now: the pipe ends when the last of them exits
        if received:  # a signal that came while they started
            forward(received[-1], None)
        codes = [process.wait() for process in processes]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    with os.fdopen(read_end, encoding="utf-8", errors="replace") as pipe:
        stopped = [line.rstrip("\n") for line in pipe if line.strip()]
    return codes, bool(received), stopped


def report_stopped(stopped: list[str]) -> bool:
    """In a worker of ``run --workers``: hand the trials a signal stopped to the parent; False elsewhere."""
    fd = os.environ.get(STOPPED_FD)
    if not fd:
        return False
    try:
        os.write(int(fd), "".join(f"{trial}\n" for trial in stopped).encode())
    except (OSError, ValueError):
        return False
    return True
