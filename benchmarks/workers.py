"""Throughput of 1 vs 2 local workers on the same grid (SQLite storage, one BLAS thread per worker).

    python benchmarks/workers.py [--points 24] [--tracking]

Each configuration runs in a fresh folder. Throughput is trials per second from the first trial's start to the last
trial's end; the wall-time ratio adds each process's start-up. Goal: throughput ratio >= 1.8x on a 2-core machine. Without --tracking, MLflow is off so the figure measures the study machinery alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from _common import HPSEARCH, report, timed, trials_per_second


def spec(points: int, tracking: bool) -> dict:
    rates = [0.02 * (k + 1) for k in range(points // 2)]
    return {
        "name": "bench-workers", "seed": 0, "data": {"dataset": "digits"},
        "defaults": {"hidden_size": 400, "learning_rate": 0.05, "num_iters": 1500, "batch_size": 200, "reg": 1e-3},
        "tracking": {"enabled": tracking},
        "phases": [{"name": "grid", "sampler": "grid", "grid": {"learning_rate": rates, "hidden_size": [300, 400]}}],
    }


def run(workers: int, points: int, tracking: bool) -> tuple[float, float]:
    """Wall seconds of the whole command, and trials per second from the first trial's start to the last's end."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(points, tracking)))
        # one BLAS thread per worker in both runs: the ratio measures scale-out, not BLAS threading
        wall = timed([*HPSEARCH, "run", str(path), "--workers", str(workers)], cwd=Path(tmp),
                     env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        timed([*HPSEARCH, "export", str(path), "--output", "trials.json"], cwd=Path(tmp))
        return wall, trials_per_second(json.loads((Path(tmp) / "trials.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=24)
    parser.add_argument("--tracking", action="store_true")
    args = parser.parse_args()
    one, one_rate = run(1, args.points, args.tracking)
    two, two_rate = run(2, args.points, args.tracking)
    report("workers", [("grid points", str(args.points)), ("tracking", str(args.tracking)),
                       ("1 worker:  wall s / trials per s", f"{one:.2f} / {one_rate:.3f}"),
                       ("2 workers: wall s / trials per s", f"{two:.2f} / {two_rate:.3f}"),
                       ("throughput ratio (trials per s)", f"{two_rate / one_rate:.2f}x (goal >= 1.8x)"),
                       ("wall-time ratio (with start-up)", f"{one / two:.2f}x")],
           {"points": args.points, "tracking": args.tracking, "one_worker_s": round(one, 3),
            "two_workers_s": round(two, 3), "throughput_ratio": round(two_rate / one_rate, 3),
            "wall_ratio": round(one / two, 3)})


if __name__ == "__main__":
    main()
