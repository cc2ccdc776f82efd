"""``run --workers N`` on one machine: start the worker processes, forward SIGINT/SIGTERM to them, wait."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["run_workers"]


def run_workers(command: list[str], env: dict[str, str], workers: int) -> tuple[list[int], bool]:
    """Run ``workers`` copies of ``command``; returns their exit codes and whether a signal stopped them.

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

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        processes += [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for _ in range(workers)]
        if received:  # a signal that came while they started
            forward(received[-1], None)
        codes = [process.wait() for process in processes]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return codes, bool(received)
