"""Shared by the benchmarks: run a command, time it, print a table and one JSON line."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
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


def report(name: str, rows: list[tuple[str, str]], result: dict) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"== {name} ==")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print(json.dumps({"benchmark": name, **result, "machine": machine()}))
