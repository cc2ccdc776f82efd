"""Shared by the benchmarks: run a command, time it, print a table and one JSON line."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HPSEARCH = [sys.executable, "-m", "hpsearch"]


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def timed(command: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def trials_per_second(rows: list[dict]) -> float:
    """Trials per second of ``hpsearch export``'s rows, from the first trial's start to the last one's end."""
    starts = [datetime.fromisoformat(row["datetime_start"]).timestamp() for row in rows]
    ends = [start + row["duration_seconds"] for start, row in zip(starts, rows)]
    return len(rows) / (max(ends) - min(starts))


def report(name: str, rows: list[tuple[str, str]], result: dict) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"== {name} ==")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print(json.dumps({"benchmark": name, **result, "machine": machine()}))
