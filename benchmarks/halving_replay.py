"""Halving schedules replayed on a finished ladders study, without training: where each would have stopped.

    python benchmarks/search.py --full --studies ladders --workdir W [--seed S]
    python benchmarks/halving_replay.py W/full-ladders/t.json [W/full-ladders-seed1/t.json ...] \
        --levels 480 1000 3000 --reduction-factor 4 [--rank-by val_loss]

A ladders study's export holds every grid point's value (the point trained alone) and each top rung's epoch reports,
so a level below the grid is read at an epoch boundary (480 iterations: one epoch of 48,000 images at batch 100, two
at 200). The levels' decisions are those of ``hpsearch.ladders.halve``, the function a halving phase runs. For each
export: the best value the schedule reaches, how far below the grid's best it is, and its training examples (each
ladder trained once, to the level it reached) as a share of the exhaustive grid's (every point trained alone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import yaml
from _common import report

from hpsearch.grid import grid_points, with_rungs
from hpsearch.ladders import halve, ladders


def replay(export: Path, budget: str, levels: list[int], reduction_factor: int, rank_by: str | None) -> dict:
    rows = json.loads(export.read_text())
    grid = {}  # (rest of the params, budget value): row
    for row in rows:
        rest = {k: v for k, v in row["params"].items() if k != budget}
        grid[json.dumps(rest, sort_keys=True), row["params"][budget]] = row
    # the phase's points in its own order (the spec beside the export), so ladders are numbered, and ties broken,
    # as the halving phase does
    spec = yaml.safe_load((export.parent / "spec.yaml").read_text())
    phase = next(p for p in spec["phases"] if p["sampler"] == "grid")
    schedule = SimpleNamespace(first_rung=None, levels=levels)
    points = grid_points(with_rungs(SimpleNamespace(schedule=schedule, budget=budget), phase["grid"]))
    found = ladders(points, budget)
    rests = {json.dumps({k: v for k, v in point.items() if k != budget}, sort_keys=True) for point in points}
    tops = {rest: grid[rest, max(v for r, v in grid if r == rest)] for rest in rests}

    def metric(point: dict) -> float | None:
        rest = json.dumps({k: v for k, v in point.items() if k != budget}, sort_keys=True)
        row = grid.get((rest, point[budget])) or tops[rest]
        if row["state"] != "COMPLETE":
            return None
        if (rest, point[budget]) in grid:
            return row["metrics"][rank_by] if rank_by else row["value"]
        history = row["epoch_history"]
        return history[rank_by or "val_acc"][history["iteration"].index(float(point[budget]))]

    budgets = [point[budget] for point in points]
    decided = {index: metric(point) for index, point in enumerate(points)}
    stopped = halve(found, budgets, decided, reduction_factor=reduction_factor, maximize=rank_by != "val_loss",
                    levels=levels).stopped
    best, examples, exhaustive = None, 0, 0
    for rungs in found.rungs:
        rest = json.dumps({k: v for k, v in points[rungs[0]].items() if k != budget}, sort_keys=True)
        batch, top = points[rungs[0]]["batch_size"], tops[rest]
        ran = [point for point in rungs if point not in stopped]
        if top["state"] != "COMPLETE":  # diverged: every point alone, and the ladder once, to where it did
            spent = max(row["examples"] or 0 for (r, _), row in grid.items() if r == rest)
            examples += spent
            exhaustive += spent * sum((r == rest) for r, _ in grid)
            continue
        examples += budgets[ran[-1]] * batch
        exhaustive += sum(value * batch for r, value in grid if r == rest)
        for point in ran:
            row = grid.get((rest, budgets[point]))
            if row is not None and (best is None or row["value"] > best["value"]):
                best = row
    top_value = max(row["value"] for row in grid.values() if row["state"] == "COMPLETE")
    return {"best": best["value"], "params": best["params"], "examples": examples, "share": examples / exhaustive,
            "below_grid_best": round((top_value - best["value"]) * 100, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("exports", nargs="+", type=Path, help="exports (JSON) of finished ladders studies, each "
                        "beside its spec.yaml (as search.py leaves them in --workdir)")
    parser.add_argument("--levels", nargs="+", type=int, required=True)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--rank-by", help="a metric of the trials (default: the objective, val_acc)")
    parser.add_argument("--budget", default="num_iters")
    args = parser.parse_args()
    results = {str(path): replay(path, args.budget, args.levels, args.reduction_factor,
                                 args.rank_by) for path in args.exports}
    rows = [(path, f"best {r['best']:.4f}, {r['below_grid_best']:.2f} points below the grid's best, "
                   f"{r['examples']:,} examples = {r['share']:.1%} of the exhaustive grid's")
            for path, r in results.items()]
    report("halving_replay", rows, {"levels": args.levels, "reduction_factor": args.reduction_factor,
                                    "rank_by": args.rank_by, "results": results})


if __name__ == "__main__":
    main()
