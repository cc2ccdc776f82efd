"""Search efficiency on CIFAR-10: the exhaustive grid vs the fast study (successive halving over epochs).

    python benchmarks/search.py --data data/cifar-10-batches-py [--full]

By default both run on a documented 48-point subset of the assignment's 288-point grid (hidden_size 80/120,
num_iters 1000/3000, batch_size 100/200, learning_rate 1e-2/1e-3/1e-4, reg 0.10/0.25), which takes minutes here;
--full runs all 288 points (about half an hour on 2 cores). Reported: best validation accuracy and total SGD
iterations of each. Goal: the fast study within 0.5 points of the exhaustive best with <= 25 % of its iterations.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from _common import HPSEARCH, REPO, report, timed

SUBSET = {"hidden_size": [80, 120], "num_iters": [1000, 3000], "batch_size": [100, 200],
          "learning_rate": [0.01, 0.001, 0.0001], "learning_rate_decay": [0.95], "reg": [0.10, 0.25]}


def run(study: str, data: str, full: bool) -> dict:
    spec = yaml.safe_load((REPO / "studies" / study).read_text())
    spec["data"]["path"] = data
    spec.pop("storage", None)
    spec["tracking"] = {"enabled": False}
    grid_phase = next(p for p in spec["phases"] if p["sampler"] == "grid")
    if not full:
        grid_phase["grid"] = SUBSET
    spec["phases"] = [grid_phase]  # the comparison is grid against grid
    if study == "cifar10-twolayer.yaml":
        spec["pruner"] = {"type": "none"}  # exhaustive: every point trains to the end
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        wall = timed([*HPSEARCH, "run", str(path)], cwd=Path(tmp))
        timed([*HPSEARCH, "export", str(path), "--output", "t.json"], cwd=Path(tmp))
        rows = json.loads((Path(tmp) / "t.json").read_text())
    iterations = 0
    for row in rows:
        history = row.get("epoch_history") or {}
        done = (history.get("iteration") or [0])[-1]
        iterations += row["params"].get("num_iters", 0) if row["state"] == "COMPLETE" else done
    best = max((r["value"] for r in rows if r["state"] == "COMPLETE"), default=float("nan"))
    return {"best_val_acc": best, "iterations": iterations, "trials": len(rows),
            "pruned": sum(r["state"] == "PRUNED" for r in rows), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO / "data" / "cifar-10-batches-py"))
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    exhaustive = run("cifar10-twolayer.yaml", data, args.full)
    fast = run("cifar10-twolayer-fast.yaml", data, args.full)
    gap = (exhaustive["best_val_acc"] - fast["best_val_acc"]) * 100
    share = fast["iterations"] / exhaustive["iterations"]
    rows = [(f"{name}: best val_acc / iterations / trials (pruned) / wall",
             f"{r['best_val_acc']:.4f} / {r['iterations']} / {r['trials']} ({r['pruned']}) / {r['wall_s']} s")
            for name, r in (("exhaustive", exhaustive), ("fast", fast))]
    rows += [("grid", "full 288 points" if args.full else "48-point subset"),
             ("gap to exhaustive best", f"{gap:.2f} points (goal <= 0.5)"),
             ("iterations used", f"{share:.1%} of exhaustive (goal <= 25 %)")]
    report("search", rows, {"exhaustive": exhaustive, "fast": fast, "gap_points": round(gap, 3),
                            "iteration_share": round(share, 4), "full": args.full})


if __name__ == "__main__":
    main()
