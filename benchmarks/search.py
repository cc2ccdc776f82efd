"""Search efficiency on CIFAR-10: the exhaustive grid, the same grid trained as budget ladders, and halving.

    python benchmarks/search.py --data data/cifar-10-batches-py [--full] [--results FILE --studies NAME...]

By default every study runs on a documented 48-point subset of the assignment's 288-point grid (hidden_size 80/120,
num_iters 1000/3000, batch_size 100/200, learning_rate 1e-2/1e-3/1e-4, reg 0.10/0.25), which takes minutes here;
--full runs all 288 points (about 25 minutes for the three on 2 idle cores; ``--results FILE`` keeps each study's
result, so the studies can also run one at a time and the last run prints the table; ``--seed S`` runs them with
another seed, and ``halving_replay.py`` replays halving schedules on the ladders' export). The data: 48,000 training
and 1,000 validation images, and the last 1,000 of the 50,000 training images held out as the test split
(``data.options.holdout``) that no trial sees, to check that each winner generalises.

Studies: ``exhaustive`` (the grid phase of ``studies/cifar10-twolayer.yaml``, every point trained alone to the end),
``ladders`` (the same grid with ``budget: num_iters``: points that differ only in ``num_iters`` train once),
``halving`` (``studies/cifar10-twolayer-fast.yaml``: the same grid's ladders, halved level by level). Reported for
each: best validation accuracy, its configuration, the winner's held-out test accuracy, training examples processed
(the trials' ``examples``), trials (pruned) and wall time; for the ladders, how many points' values differ from the
exhaustive grid's. Goals: ladders give every point the exhaustive value with <= 55 % of its examples;
halving finds the exhaustive winner (or one within 0.3 points of its validation accuracy) with <= 20 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from _common import HPSEARCH, REPO, report, timed

SUBSET = {"hidden_size": [80, 120], "num_iters": [1000, 3000], "batch_size": [100, 200],
          "learning_rate": [0.01, 0.001, 0.0001], "learning_rate_decay": [0.95], "reg": [0.10, 0.25]}
DATA = {"num_train": 48000, "num_val": 1000, "options": {"holdout": 1000}}
STUDIES = {  # name: (spec in studies/, what the grid phase gains)
    "exhaustive": ("cifar10-twolayer.yaml", {}),
    "ladders": ("cifar10-twolayer.yaml", {"budget": "num_iters"}),
    "halving": ("cifar10-twolayer-fast.yaml", {}),
}


def run(name: str, data: str, full: bool, workdir: Path | None, seed: int | None = None) -> dict:
    study, phase_extra = STUDIES[name]
    spec = yaml.safe_load((REPO / "studies" / study).read_text())
    spec["name"] = f"search-{name}"
    if seed is not None:  # another draw of every point's training: how much a result owes to one draw
        spec["seed"] = seed
    spec["data"] = {key: value for key, value in spec["data"].items() if key != "num_test"}
    spec["data"].update(DATA, path=data)
    spec.pop("storage", None)
    spec["tracking"] = {"enabled": False}
    grid_phase = next(p for p in spec["phases"] if p["sampler"] == "grid")
    grid_phase.update(phase_extra)
    if not full:
        grid_phase["grid"] = SUBSET
    spec["phases"] = [grid_phase]  # the comparison is grid against grid
    if study == "cifar10-twolayer.yaml":
        spec["pruner"] = {"type": "none"}  # every point trains to the end
    with contextlib.ExitStack() as stack:
        if workdir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
        else:  # kept: an interrupted study resumes where it stopped when the benchmark runs again
            tmp = workdir / f"{'full' if full else 'subset'}-{name}{'' if seed is None else f'-seed{seed}'}"
            tmp.mkdir(parents=True, exist_ok=True)
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        wall = timed([*HPSEARCH, "run", str(path)], cwd=Path(tmp))
        timed([*HPSEARCH, "export", str(path), "--output", "t.json"], cwd=Path(tmp))
        rows = json.loads((Path(tmp) / "t.json").read_text())
        status = json.loads(subprocess.run([*HPSEARCH, "status", str(path), "--json"], cwd=tmp, check=True,
                                           capture_output=True, text=True).stdout)
    best = status.get("best") or {}
    return {"best_val_acc": best.get("value"), "best_params": best.get("params"), "test_acc": best.get("test_acc"),
            "examples": sum(row.get("examples") or 0 for row in rows), "trials": len(rows),
            "pruned": sum(row["state"] == "PRUNED" for row in rows), "wall_s": round(wall, 1),
            "values": {json.dumps(row["params"], sort_keys=True): row["value"] for row in rows}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO / "data" / "cifar-10-batches-py"))
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--studies", nargs="*", choices=list(STUDIES), default=list(STUDIES),
                        help="run these studies now; the others' results come from --results")
    parser.add_argument("--results", type=Path, help="a JSON file of each study's result: read for the studies "
                        "not run now, written with the ones that are (the full grid takes hours: run it in parts)")
    parser.add_argument("--workdir", type=Path, help="keep each study's storage in a folder here (default: a "
                        "temporary folder), so that a study stopped midway resumes")
    parser.add_argument("--seed", type=int, help="the studies' seed instead of their spec's (results kept apart)")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    grid = ("full" if args.full else "subset") + ("" if args.seed is None else f"-seed{args.seed}")
    kept = json.loads(args.results.read_text()) if args.results and args.results.exists() else {}
    results = {}
    for name in STUDIES:
        if name in args.studies:
            result = run(name, data, args.full, args.workdir, args.seed)
            results[name] = {**result, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            if args.results:
                kept[f"{grid}:{name}"] = results[name]
                args.results.write_text(json.dumps(kept, indent=1))
        elif f"{grid}:{name}" in kept:
            results[name] = kept[f"{grid}:{name}"]
    rows = [(f"{name}: best val_acc / test_acc / examples / trials (pruned) / wall",
             f"{r['best_val_acc']:.4f} / {r['test_acc']:.4f} / {r['examples']:,} / {r['trials']} ({r['pruned']}) / "
             f"{r['wall_s']} s") for name, r in results.items()]
    missing = [name for name in STUDIES if name not in results]
    if missing:  # the studies run now, without the comparison
        rows.append(("no comparison", f"no result for {', '.join(missing)} on the {grid} grid yet (--studies, "
                                      "--results)"))
        report("search", rows, {name: {k: v for k, v in r.items() if k != "values"} for name, r in results.items()})
        return
    exhaustive, ladders, halving = results["exhaustive"], results["ladders"], results["halving"]
    differ = sum(ladders["values"].get(point) != value for point, value in exhaustive["values"].items())
    rows += [(f"{name}: winner", json.dumps(r["best_params"], sort_keys=True)) for name, r in results.items()]
    share = {name: r["examples"] / exhaustive["examples"] for name, r in results.items()}
    gap = (exhaustive["best_val_acc"] - halving["best_val_acc"]) * 100
    same = halving["best_params"] == exhaustive["best_params"]
    rows += [("grid", "full 288 points" if args.full else "48-point subset"),
             ("ladders: points whose value differs from exhaustive", f"{differ} of {len(exhaustive['values'])}"),
             ("ladders: examples", f"{share['ladders']:.1%} of exhaustive (goal <= 55 %)"),
             ("halving: winner", f"{'the exhaustive winner' if same else 'another point'}, {gap:.2f} points below "
                                 "the exhaustive best (goal <= 0.3)"),
             ("halving: examples", f"{share['halving']:.1%} of exhaustive (goal <= 20 %)")]
    rows += [(f"{name}: measured", r["measured"]) for name, r in results.items()]
    for r in results.values():
        del r["values"]
    report("search", rows, {**results, "ladder_values_differing": differ, "example_share": share, "full": args.full})


if __name__ == "__main__":
    main()
