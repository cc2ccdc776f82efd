"""Halving schedules replayed on a finished ladders study, without training: where each would have stopped.

    python benchmarks/search.py --full --studies ladders --workdir W [--seed S]
    python benchmarks/halving_replay.py W/full-ladders/t.json [W/full-ladders-seed1/t.json ...] \
        --levels 480 1000 3000 --reduction-factor 4 [--rank-by val_loss]

A ladders study's export holds every grid point's value (the point trained alone) and each top rung's epoch reports,
so a level below the grid is read at an epoch boundary (480 iterations: one epoch of 48,000 images at batch 100, two
at 200). The spec beside the export, its grid phase given the schedule, is validated as ``hpsearch run`` does, and the
levels' decisions are those of ``hpsearch.search.ladders.halve`` with the phase's own ranking metric and direction
(``hpsearch.search.ladders.rank_metric``), the code a halving phase runs. For each
export: the best value the schedule reaches, how far below the grid's best it is, and its training examples (each
ladder trained once, to the level it reached) as a share of the exhaustive grid's (every point trained alone).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import yaml
from _common import report

from hpsearch.search.grid import grid_points, with_rungs
from hpsearch.search.ladders import halve
from hpsearch.spec.build import build_spec
from hpsearch.spec.checks import check_budget, rank_metric
from hpsearch.spec.models import PhaseSpec, StudySpec


def halving_phase(export: Path, levels: list[int], reduction_factor: int,
                  rank_by: str | None) -> tuple[StudySpec, PhaseSpec]:
    """The spec beside ``export``, its grid phase given the halving schedule to replay, validated as ``hpsearch run``
    validates it: the replay's levels, ranking metric and direction are then the phase's own."""
    path = export.parent / "spec.yaml"
    raw = yaml.safe_load(path.read_text())
    phase = next(p for p in raw["phases"] if p["sampler"] == "grid")
    schedule = {"type": "halving", "reduction_factor": reduction_factor, "levels": levels,
                **({"rank_by": rank_by} if rank_by else {})}
    spec = build_spec({**raw, "phases": [{**phase, "schedule": schedule}]}, str(path), path.parent)
    return spec, spec.phases[0]


def replay(export: Path, levels: list[int], reduction_factor: int, rank_by: str | None) -> dict:
    rows = json.loads(export.read_text())
    spec, phase = halving_phase(export, levels, reduction_factor, rank_by)
    budget, direction = phase.budget, spec.objective.direction
    rank, maximize = rank_metric(spec, phase)  # what the phase ranks by, and which way
    metric = rank or spec.objective.metric
    # the phase's points in its own order, so ladders are numbered, and ties broken, as the halving phase does
    points = grid_points(with_rungs(phase, phase.grid))
    found = check_budget(spec, phase, phase.grid, where="the replayed phase")
    stored = {json.dumps(row["params"], sort_keys=True): row for row in rows}
    row_at = [stored.get(json.dumps(point, sort_keys=True)) for point in points]  # None: a level the grid lacks

    def value(point: int, top: dict) -> float | None:
        row = row_at[point]
        if row is not None:
            number = row["metrics"].get(metric) if row["state"] == "COMPLETE" else None
        else:  # read from the ladder's run, at that iteration (as the rung trained alone reports it)
            history = top.get("epoch_history") or {}
            at = [k for k, n in enumerate(history.get("iteration", [])) if n == points[point][budget]]
            number = history[metric][at[0]] if at else None
        return number if isinstance(number, (int, float)) and math.isfinite(number) else None

    budgets = [point[budget] for point in points]
    decided = {}
    for rungs in found.rungs:
        top = row_at[rungs[-1]] or {}
        decided.update((point, value(point, top)) for point in rungs)
    stopped = halve(found, budgets, decided, reduction_factor=phase.schedule.reduction_factor, maximize=maximize,
                    levels=tuple(phase.schedule.levels)).stopped
    sign = 1 if direction == "maximize" else -1
    best, examples, exhaustive = None, 0, 0
    for rungs in found.rungs:
        own = [row_at[point] for point in rungs if row_at[point] is not None]
        trained = sum(row["examples"] or 0 for row in own)  # the ladder's run, to its top or to where it diverged
        batch = spec.config(**points[rungs[0]])["batch_size"]
        ran = [point for point in rungs if point not in stopped]
        examples += min(trained, budgets[ran[-1]] * batch)
        exhaustive += sum(min(trained, row["params"][budget] * batch) for row in own)  # each point alone
        for row in (row_at[point] for point in ran):
            if row is not None and row["state"] == "COMPLETE" and (best is None or sign * row["value"] > sign * best):
                best = row["value"]
    grid_best = (max if sign > 0 else min)(row["value"] for row in rows if row["state"] == "COMPLETE")
    return {"best": best, "below_grid_best": round(abs(grid_best - best) * 100, 2), "examples": examples,
            "exhaustive_examples": exhaustive, "share": examples / exhaustive,
            "stopped": sorted(json.dumps(points[point], sort_keys=True) for point in stopped)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("exports", nargs="+", type=Path, help="exports (JSON) of finished ladders studies, each "
                        "beside its spec.yaml (as search.py leaves them in --workdir)")
    parser.add_argument("--levels", nargs="+", type=int, required=True)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--rank-by", help="a metric of the trials (default: the objective, val_acc)")
    args = parser.parse_args()
    results = {str(path): replay(path, args.levels, args.reduction_factor, args.rank_by) for path in args.exports}
    rows = [(path, f"best {r['best']:.4f}, {r['below_grid_best']:.2f} points below the grid's best, "
                   f"{r['examples']:,} examples = {r['share']:.1%} of the exhaustive grid's")
            for path, r in results.items()]
    report("halving_replay", rows, {"levels": args.levels, "reduction_factor": args.reduction_factor,
                                    "rank_by": args.rank_by, "results": results})


if __name__ == "__main__":
    main()
