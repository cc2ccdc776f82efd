"""Seconds from Ctrl-C to the end of `hpsearch run`, MLflow tracking on: one process and `--workers 3`.

    python benchmarks/interrupt.py [--repeats 4]

Ctrl-C is SIGINT to the run's whole process group, as a terminal sends it, at moments spread over the first seconds
of the quickstart: while the tracking process starts (it imports MLflow) and once trials train. Each row also checks
what a user sees: exactly one "Interrupted" line and no traceback. Goal: every exit within 2 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _common import HPSEARCH, REPO, report


def _tracking_started(pid: int) -> bool:
    """Whether the run (or one of its workers) started its tracking process."""
    found = subprocess.run(["pgrep", "-f", "multiprocessing.spawn", "-s", str(pid)], capture_output=True, text=True)
    return bool(found.stdout.strip())


def interrupt_once(workers: int, delay: float) -> tuple[float, str]:
    """Seconds from SIGINT to the run's exit, and its stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [*HPSEARCH, "run", str(REPO / "studies" / "quickstart.yaml"), "--workers", str(workers),
                   "--storage", f"sqlite:///{tmp}/q.db", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
        with open(Path(tmp) / "stderr", "w+") as err:
            proc = subprocess.Popen(command, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            while not _tracking_started(proc.pid):
                if proc.poll() is not None:
                    raise SystemExit(f"the run ended before its tracking process started ({proc.returncode})")
            time.sleep(delay)  # a benchmark's moment, not a test's synchronisation
            sent = time.perf_counter()
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait()
            seconds = time.perf_counter() - sent
            err.seek(0)
            return seconds, err.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    rows, result = [], {}
    for workers in (1, 3):
        seconds = []
        for k in range(args.repeats):
            delay = [0.0, 0.3, 1.5, 4.0][k % 4]
            took, err = interrupt_once(workers, delay)
            lines = sum("Interrupted" in line for line in err.splitlines())
            clean = "Traceback" not in err and "KeyboardInterrupt" not in err
            seconds.append(took)
            rows.append((f"--workers {workers}, Ctrl-C {delay:.1f} s after tracking started",
                         f"exit after {took:.2f} s, {lines} 'Interrupted' line(s), "
                         f"{'no traceback' if clean else 'A TRACEBACK'}"))
        result[f"workers_{workers}_max_seconds"] = round(max(seconds), 2)
    report("interrupt", rows, result)


if __name__ == "__main__":
    main()
