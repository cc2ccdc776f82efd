"""Multi-fidelity search side by side: full-budget random search, Optuna's TPE with its Hyperband and successive
halving pruners, and hpsearch's random and TPE searches under ASHA, on the same space, data split and compute budget.

    python benchmarks/multifidelity.py --workload twolayer --data data/cifar-10-batches-py [--seeds 0 1 2]
    python benchmarks/multifidelity.py --workload mlp --data data/cifar-10-batches-py       # the torch extra
    python benchmarks/multifidelity.py --workload digits                                    # about a minute

A CIFAR-10 seed takes about an hour on 2 cores. ``--results DIR`` keeps each seed's results there as it ends
(``<workload>-seed<N>.json``) and takes up the seeds it already holds, so seeds can run in processes of their own
(``--seeds 1 --results DIR`` beside ``--seeds 2 --results DIR``: their wall times then mean nothing, their
examples the same) and one last run with every seed reports them together, each with when and on which commit it
was measured; or an interrupted run goes on from its last whole seed.

Workloads: ``twolayer``, the assignment's NumPy two-layer network on CIFAR-10 (48,000 training and 1,000 validation
images, the last 1,000 training images held out as the test split no trial sees), over the ranges the assignment's
param_grid spans (hidden 60-120, learning rate 1e-4 to 1e-2 on a log scale, reg 0.1-0.35, batch 100 or 200), budget
``num_iters`` up to 3,000; ``mlp``, the Torch MLP of ``studies/cifar10-best.yaml`` on a 10,000-image subset, budget
``num_epochs`` up to 15; ``digits``, the quickstart's network on sklearn's digits, to check the benchmark itself.

Methods, each with each seed: ``random`` (the reference: ``reference_configs`` configurations drawn at random, each
trained to the full budget, ``hpsearch run`` without a schedule), ``asha`` (``hpsearch run`` of a random phase with
``schedule: {type: asha}``, as many configurations as fit in the reference's training examples), ``tpe-asha`` (the
same with a TPE phase, which proposes each configuration as ASHA starts it), ``optuna-hyperband`` and
``optuna-halving`` (Optuna's own ``study.optimize`` with ``TPESampler`` and ``HyperbandPruner`` or
``SuccessiveHalvingPruner``, the same trainable trained in 27 equal stages of the budget (epochs for ``mlp``), each
reported to the pruner, until the reference's training examples are spent). Training examples are the trainable's
own count, summed over every trial and rung. A rung of ASHA is a trial with its own value, so it counts as found
from the moment it ends; an Optuna trial its pruner stopped has no value.

Reported per method: the best validation accuracy, the winner's held-out test accuracy, the training examples spent,
and the examples after which its best so far came within 0.3 points of the reference's best (median of the seeds);
``--plot FILE`` draws the best validation accuracy so far against the examples spent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from _common import HPSEARCH, REPO, report, timed

WITHIN = 0.003  # "came within 0.3 points of the reference's best"
STAGES = 27  # the Optuna methods' reports along the budget: ASHA's lowest rung is 1/27 of it

WORKLOADS: dict[str, dict[str, Any]] = {
    "twolayer": {
        "data": {"dataset": "cifar10", "num_train": 48000, "num_val": 1000, "options": {"holdout": 1000}},
        "model": {"backend": "numpy"},
        "defaults": {"hidden_size": 80, "learning_rate": 1.0e-3, "learning_rate_decay": 0.95, "reg": 0.25,
                     "batch_size": 200, "num_iters": 3000},
        "space": {"hidden_size": {"type": "int", "low": 60, "high": 120},
                  "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
                  "reg": {"type": "float", "low": 0.1, "high": 0.35},
                  "batch_size": {"type": "categorical", "choices": [100, 200]}},
        "budget": "num_iters", "max_budget": 3000, "min_budget": 111, "reference_configs": 24,
    },
    "mlp": {
        "data": {"dataset": "cifar10", "num_train": 10000, "num_val": 1000, "preprocess": "pca",
                 "whitening": {"components": 256, "epsilon": 1.0}, "options": {"holdout": 1000}},
        "model": {"backend": "torch"},
        "defaults": {"hidden_sizes": [2048, 1024], "init": "kaiming", "dropout": 0.4, "num_epochs": 15,
                     "batch_size": 256, "optimizer": "adam", "learning_rate": 1.0e-3, "learning_rate_decay": 0.9,
                     "reg": 1.0e-4, "label_smoothing": 0.1, "device": "auto"},
        "space": {"hidden_sizes": {"type": "categorical",
                                   "choices": [[1024, 512], [2048, 1024], [2048, 2048], [2048, 1024, 512]]},
                  "dropout": {"type": "float", "low": 0.2, "high": 0.6},
                  "learning_rate": {"type": "float", "low": 3.0e-4, "high": 3.0e-3, "log": True},
                  "reg": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True}},
        "budget": "num_epochs", "max_budget": 15, "min_budget": 1, "reference_configs": 12, "stages": 15,
    },
    "digits": {
        "data": {"dataset": "digits"},
        "model": {"backend": "numpy"},
        "defaults": {"hidden_size": 50, "learning_rate": 3.0e-2, "learning_rate_decay": 0.95, "reg": 1.0e-3,
                     "batch_size": 100, "num_iters": 810},
        "space": {"hidden_size": {"type": "int", "low": 20, "high": 120, "step": 20},
                  "learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True},
                  "reg": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
                  "batch_size": {"type": "categorical", "choices": [50, 100]}},
        "budget": "num_iters", "max_budget": 810, "min_budget": 30, "reference_configs": 12,
    },
}
METHODS = ("random", "asha", "tpe-asha", "optuna-hyperband", "optuna-halving")
HPSEARCH_METHODS = METHODS[:3]


def spec_of(workload: dict[str, Any], data_path: str | None, seed: int, phase: dict[str, Any]) -> dict[str, Any]:
    data = {**workload["data"], **({"path": data_path} if data_path else {})}
    return {"name": f"mf-{phase['name']}", "seed": seed, "data": data, "model": workload["model"],
            "defaults": workload["defaults"], "objective": {"metric": "val_acc", "direction": "maximize"},
            "pruner": {"type": "none"}, "tracking": {"enabled": False}, "phases": [phase]}


def asha_configs(workload: dict[str, Any]) -> int:
    """The most configurations ASHA can start within the reference's training (in budget units, by the synchronous
    estimate of :func:`hpsearch.search.asha.work`)."""
    from hpsearch.search.asha import rungs, work

    budgets = rungs(workload["min_budget"], workload["max_budget"], 3)
    spend = workload["reference_configs"] * workload["max_budget"]
    configs = workload["reference_configs"]
    while work(configs + 1, budgets, 3)[0] <= spend:
        configs += 1
    return configs


def run_hpsearch(method: str, workload: dict[str, Any], data_path: str | None, seed: int, folder: Path) -> dict:
    """``random``, ``asha`` or ``tpe-asha`` as a user runs them: ``hpsearch run``, then the trials from ``hpsearch
    export``."""
    phase: dict[str, Any] = {"name": method, "sampler": "tpe" if method == "tpe-asha" else "random",
                             "space": workload["space"]}
    if method == "random":
        phase["n_trials"] = workload["reference_configs"]
    else:
        phase.update(n_trials=asha_configs(workload), budget=workload["budget"],
                     schedule={"type": "asha", "reduction_factor": 3, "min_budget": workload["min_budget"],
                               "max_budget": workload["max_budget"]})
    spec = folder / f"{method}.yaml"
    spec.write_text(yaml.safe_dump(spec_of(workload, data_path, seed, phase)))
    wall = timed([*HPSEARCH, "run", str(spec)], cwd=folder)
    timed([*HPSEARCH, "export", str(spec), "--output", f"{method}.json"], cwd=folder)
    rows = sorted(json.loads((folder / f"{method}.json").read_text()), key=lambda row: row["number"])
    status = json.loads(subprocess.run([*HPSEARCH, "status", str(spec), "--json"], cwd=folder, check=True,
                                       capture_output=True, text=True).stdout)
    curve = _curve([(row.get("examples") or 0, row["value"] if row["state"] == "COMPLETE" else None) for row in rows])
    best = status.get("best") or {}
    return {"best_val_acc": best.get("value"), "test_acc": best.get("test_acc"), "curve": curve,
            "examples": curve[-1][0] if curve else 0, "trials": len(rows), "wall_s": round(wall, 1)}


def run_optuna(method: str, workload: dict[str, Any], data_path: str | None, seed: int, budget_examples: int,
               folder: Path) -> dict:
    """Optuna's own loop: TPE proposes, the pruner stops trials along the budget, until ``budget_examples`` are
    spent; the same trainable, staged as hpsearch stages it, on the same data split."""
    import optuna

    from hpsearch.backends import DivergedError
    from hpsearch.engine.training import load_data, score_test_split, start_training, train_once
    from hpsearch.search.grid import trial_seed
    from hpsearch.spec.build import build_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    phase = {"name": method, "sampler": "random", "n_trials": 1, "space": workload["space"]}
    spec = build_spec(spec_of(workload, data_path, seed, phase), "multifidelity", folder)
    data = load_data(spec)
    stages = workload.get("stages", STAGES)
    top = workload["max_budget"]
    steps = sorted({max(1, round(top * k / stages)) for k in range(1, stages + 1)})
    pruner = (optuna.pruners.HyperbandPruner(min_resource=1, max_resource=len(steps), reduction_factor=3)
              if method == "optuna-hyperband" else
              optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    points: list[tuple[int, float | None]] = []  # per trial: examples it spent, its value (None: pruned)
    started = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, space) for name, space in workload["space"].items()}
        training = start_training(spec, data, {**params, workload["budget"]: top},
                                  seed=trial_seed(seed, method, trial.number))
        value = None
        try:
            for step, budget in enumerate(steps, start=1):
                value = spec.trainable.advance(training, budget, config=spec.config(**params), history={}).val_acc
                trial.report(value, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        except (optuna.TrialPruned, DivergedError) as exc:  # a diverged run ends pruned, as in hpsearch
            points.append((training.examples, None))
            raise optuna.TrialPruned() from exc
        points.append((training.examples, value))
        trial.set_user_attr("params", params)
        return value

    def spent(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if sum(examples for examples, _ in points) >= budget_examples:
            study.stop()

    study.optimize(objective, callbacks=[spent])
    wall = time.perf_counter() - started
    best = study.best_trial
    params = {**best.user_attrs["params"], workload["budget"]: top}
    winner = train_once(spec, data, params, seed=trial_seed(seed, method, best.number))
    curve = _curve(points)
    return {"best_val_acc": best.value, "test_acc": (score_test_split(spec, data, winner) or {}).get("test_acc"),
            "curve": curve, "examples": curve[-1][0], "trials": len(study.trials), "wall_s": round(wall, 1)}


def _suggest(trial: Any, name: str, space: dict[str, Any]) -> Any:
    if space["type"] == "categorical":
        choices = [json.dumps(choice) for choice in space["choices"]]  # lists are no Optuna choices
        return json.loads(trial.suggest_categorical(name, choices))
    if space["type"] == "int":
        return trial.suggest_int(name, space["low"], space["high"], step=space.get("step", 1))
    return trial.suggest_float(name, space["low"], space["high"], log=space.get("log", False))


def _curve(trials: list[tuple[int, float | None]]) -> list[tuple[int, float]]:
    """(training examples spent so far, best validation accuracy so far) after each trial, in the order they ran."""
    curve, spent, best = [], 0, float("-inf")
    for examples, value in trials:
        spent += examples
        if value is not None:
            best = max(best, value)
        if best > float("-inf"):
            curve.append((spent, best))
    return curve


def reached(curve: list[tuple[int, float]], target: float) -> int | None:
    """The training examples after which the best so far came within :data:`WITHIN` of ``target``."""
    return next((spent for spent, best in curve if best >= target - WITHIN - 1e-12), None)


def same_accuracy(curve: list[tuple[int, float]], anchor: list[tuple[int, float]]) -> float:
    """The examples ``curve`` needed to reach the accuracy both it and ``anchor`` reach (the lower of their bests),
    over the examples ``anchor`` needed to reach it."""
    both = min(curve[-1][1], anchor[-1][1])
    return reached(curve, both + WITHIN) / reached(anchor, both + WITHIN)


def plot(results: dict[str, dict[int, dict]], path: Path, workload: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for index, (method, by_seed) in enumerate(results.items()):
        for number, (seed, result) in enumerate(sorted(by_seed.items())):
            spent, best = zip(*result["curve"])
            axes.step(spent, best, where="post", color=f"C{index}", alpha=0.8,
                      label=method if number == 0 else None)
    axes.set_xscale("log")
    axes.set_xlabel("training examples spent")
    axes.set_ylabel("best validation accuracy so far")
    axes.set_title(f"{workload}: one line per seed")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run_seed(name: str, data: str | None, seed: int, kept: Path | None) -> dict[str, Any]:
    """One seed: when and on which commit it was measured, and every method's results; from ``kept`` where an
    earlier run left them there (refused when they were measured on other data or with other methods)."""
    saved = kept / f"{name}-seed{seed}.json" if kept is not None else None
    if saved is not None and saved.exists():
        found = json.loads(saved.read_text())
        if found.get("data", data) != data or set(found["methods"]) != set(METHODS):
            raise SystemExit(f"{saved} holds seed {seed} measured on {found.get('data')} with the methods "
                             f"{sorted(found['methods'])}; move it away to measure {data or 'the bundled data'} with "
                             f"{sorted(METHODS)}")
        return found
    workload, results = WORKLOADS[name], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for method in HPSEARCH_METHODS:
            results[method] = run_hpsearch(method, workload, data, seed, folder)
        budget_examples = results["random"]["examples"]
        for method in ("optuna-hyperband", "optuna-halving"):
            results[method] = run_optuna(method, workload, data, seed, budget_examples, folder)
    found = {"workload": name, "seed": seed, "data": data, "commit": _commit(),
             "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "methods": results}
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=saved.parent, prefix=f".{saved.name}.", suffix=".partial")
        with os.fdopen(fd, "w") as f:
            json.dump(found, f)
        os.replace(partial, saved)
    return found


def _commit() -> str | None:
    """The commit measured, with ``+changes`` when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        return None
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                             capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=list(WORKLOADS), default="digits")
    parser.add_argument("--data", help="the cifar-10-batches-py folder (twolayer, mlp)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--plot", type=Path, help="write the curves of best validation accuracy here (a PNG)")
    parser.add_argument("--results", type=Path, help="keep each seed's results in this folder; take up those there")
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    data = str(Path(args.data).resolve()) if args.data else None
    if workload["data"]["dataset"] == "cifar10" and data is None:
        raise SystemExit(f"--workload {args.workload} needs --data (python ../shared/data/make_cifar10.py data)")
    results: dict[str, dict[int, dict]] = {method: {} for method in METHODS}
    measured = {}
    for seed in args.seeds:
        found = run_seed(args.workload, data, seed, args.results)
        measured[seed] = {"measured": found["measured"], "commit": found.get("commit")}
        for method, result in found["methods"].items():
            results[method][seed] = result
    rows, summary = [], {}
    for method, by_seed in results.items():
        needed = [reached(result["curve"], results["random"][seed]["best_val_acc"])
                  for seed, result in by_seed.items()]
        # a seed that never came within counts as worse than any that did: the median is "never" when most never did
        share = [n / results["random"][seed]["examples"] if n is not None else math.inf
                 for n, seed in zip(needed, by_seed)]
        median_share = statistics.median(share)
        summary[method] = {
            "best_val_acc": statistics.median(r["best_val_acc"] for r in by_seed.values()),
            "test_acc": statistics.median(r["test_acc"] for r in by_seed.values() if r["test_acc"] is not None),
            "examples": statistics.median(r["examples"] for r in by_seed.values()),
            "examples_to_within": {seed: n for seed, n in zip(by_seed, needed)},
            "share_to_within": median_share if median_share < math.inf else None,
            "seeds_within": sum(n is not None for n in needed),
            "trials": statistics.median(r["trials"] for r in by_seed.values()),
            "wall_s": statistics.median(r["wall_s"] for r in by_seed.values()),
        }
        s = summary[method]
        within = f"{s['share_to_within']:.1%} of the reference's" if s["share_to_within"] is not None else "never"
        rows.append((f"{method}: best val / test / examples / trials / wall (median of {len(args.seeds)} seeds)",
                     f"{s['best_val_acc']:.4f} / {s['test_acc']:.4f} / {s['examples']:,.0f} / {s['trials']:.0f} / "
                     f"{s['wall_s']} s"))
        rows.append((f"{method}: examples to within 0.3 points of the reference's best",
                     f"{within} (median; {s['seeds_within']} of {len(by_seed)} seeds came within)"))
    for method in ("asha", "tpe-asha"):
        ratios = [same_accuracy(results[method][seed]["curve"], results["optuna-hyperband"][seed]["curve"])
                  for seed in args.seeds]
        summary[method]["against_hyperband"] = statistics.median(ratios)
        rows.append((f"{method} against optuna-hyperband: examples to the accuracy both reach",
                     f"{statistics.median(ratios):.2f}x, median of {', '.join(f'{r:.2f}' for r in ratios)} "
                     "(goal <= 0.5x; and <= 25 % of the reference's)"))
    if args.plot:
        plot(results, args.plot, args.workload)
        rows.append(("plot", str(args.plot)))
    report("multifidelity", rows, {"workload": args.workload, "seeds": args.seeds, "methods": summary,
                                   "measured": measured})


if __name__ == "__main__":
    main()
