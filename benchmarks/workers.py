"""Throughput of 1 vs 2 local workers on the same grid (SQLite storage, one BLAS thread per worker).

    python benchmarks/workers.py [--points 16] [--tracking]

Each configuration runs in a fresh folder; the ratio is 1-worker wall time / 2-worker wall time. Goal: >= 1.8x on
a 2-core machine. Without --tracking, MLflow is off so the figure measures the study machinery alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from _common import HPSEARCH, report, timed


def spec(points: int, tracking: bool) -> dict:
    rates = [0.02 * (k + 1) for k in range(points // 2)]
    return {
        "name": "bench-workers", "seed": 0, "data": {"dataset": "digits"},
        "defaults": {"hidden_size": 400, "learning_rate": 0.05, "num_iters": 1500, "batch_size": 200, "reg": 1e-3},
        "tracking": {"enabled": tracking},
        "phases": [{"name": "grid", "sampler": "grid", "grid": {"learning_rate": rates, "hidden_size": [300, 400]}}],
    }


def run(workers: int, points: int, tracking: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(points, tracking)))
        return timed([*HPSEARCH, "run", str(path), "--workers", str(workers)], cwd=Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--tracking", action="store_true")
    args = parser.parse_args()
    one = run(1, args.points, args.tracking)
    two = run(2, args.points, args.tracking)
    ratio = one / two
    report("workers", [("grid points", str(args.points)), ("tracking", str(args.tracking)),
                       ("1 worker  (s)", f"{one:.2f}"), ("2 workers (s)", f"{two:.2f}"),
                       ("throughput ratio", f"{ratio:.2f}x (goal >= 1.8x)")],
           {"points": args.points, "tracking": args.tracking, "one_worker_s": round(one, 3),
            "two_workers_s": round(two, 3), "ratio": round(ratio, 3)})


if __name__ == "__main__":
    main()
