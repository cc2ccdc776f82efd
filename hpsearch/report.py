"""Comparison plots and a Markdown summary of a study, drawn with matplotlib from plain data.

Used by tracking (as MLflow artifacts) and by ``hpsearch report`` (to a folder). Knows neither Optuna nor MLflow:
its input is a :class:`hpsearch.driver.StudyReport`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from hpsearch.driver import StudyReport

__all__ = ["write_report", "PLOTS"]

PLOTS = ("val_acc_vs_params.png", "best_loss_curve.png", "best_accuracy_curves.png", "optimization_history.png",
         "param_importances.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scored(report: StudyReport) -> list[dict[str, Any]]:
    return [t for t in report.trials if t["state"] == "COMPLETE" and t["value"] is not None
            and math.isfinite(t["value"])]


def plot_params(report: StudyReport, path: Path) -> None:
    """Validation accuracy against each searched parameter, one panel per parameter, coloured by phase."""
    plt = _pyplot()
    names: dict[str, bool] = {}
    for space in report.spaces.values():
        for name, log in space.items():
            names[name] = names.get(name, False) or log
    names = names or {"trial": False}
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    scored = _scored(report)
    for ax, (name, log) in zip(axes.flat, names.items()):
        values = [t["params"].get(name, t["number"] if name == "trial" else None) for t in scored]
        numeric = all(_as_number(v) is not None for v in values if v is not None)
        for phase in dict.fromkeys(t["phase"] for t in scored):
            points = [(t["params"].get(name, t["number"] if name == "trial" else None), t["value"])
                      for t in scored if t["phase"] == phase]
            # lists and strings (e.g. hidden_sizes) go on a categorical axis, numbers on a linear or log one
            points = [(_as_number(x) if numeric else str(x), y) for x, y in points if x is not None]
            if points:
                ax.scatter(*zip(*points), label=phase, alpha=0.7, s=18)
        if log and numeric:
            ax.set_xscale("log")
        if not numeric:
            ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(name)
        ax.set_ylabel(report.metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{report.study}: {report.metric} by parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def plot_loss(report: StudyReport, path: Path) -> None:
    """The best trial's training loss per iteration, as in the assignment's figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    losses = report.best_result.loss_history if report.best_result is not None else []
    ax.plot(range(1, len(losses) + 1), losses, linewidth=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(_best_title(report))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_accuracy(report: StudyReport, path: Path) -> None:
    """The best trial's train (minibatch) and validation accuracy per epoch: where they part, it overfits."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    result = report.best_result
    if result is not None:
        epochs = range(1, len(result.val_acc_history) + 1)
        ax.plot(epochs, result.train_acc_history, marker="o", label="train")
        ax.plot(epochs, result.val_acc_history, marker="o", label="val")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(_best_title(report))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _best_title(report: StudyReport) -> str:
    best = report.best
    if not best:
        return f"{report.study}: no complete trial"
    return f"{report.study}: best trial ({best['phase']} #{best['trial']}, {report.metric} {best['value']:.4f})"


def plot_history(report: StudyReport, path: Path) -> None:
    """Every trial's score in the order trials ran, with the best so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ordered = sorted(_scored(report), key=lambda t: t["datetime_start"] or "")
    pick = max if report.direction == "maximize" else min
    running: list[float] = []
    for t in ordered:
        running.append(t["value"] if not running else pick(running[-1], t["value"]))
    for phase in dict.fromkeys(t["phase"] for t in ordered):
        xs = [i for i, t in enumerate(ordered) if t["phase"] == phase]
        ax.scatter(xs, [ordered[i]["value"] for i in xs], s=14, label=phase, alpha=0.7)
    ax.plot(range(len(running)), running, color="black", linewidth=1.2, label="best so far")
    ax.set_xlabel("trial (in the order they ran)")
    ax.set_ylabel(report.metric)
    ax.set_title(f"{report.study}: optimisation history")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_importances(report: StudyReport, path: Path) -> None:
    """Parameter importances (fANOVA) per phase."""
    plt = _pyplot()
    phases = {phase: imp for phase, imp in report.importances.items() if imp} or {"(too few trials)": {}}
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.5), squeeze=False)
    for ax, (phase, importances) in zip(axes.flat, phases.items()):
        ordered = sorted(importances.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in ordered], [v for _, v in ordered])
        ax.set_title(f"phase {phase}")
        ax.set_xlabel("importance")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary_markdown(report: StudyReport) -> str:
    lines = [f"# Study `{report.study}`", ""]
    lines += ["| phase | state | done/total | complete | pruned | failed | best |", "|---|---|---|---|---|---|---|"]
    for p in report.summary.get("phases", []):
        best = f"{p['best_value']:.4f} (trial {p['best_trial']})" if p["best_value"] is not None else "-"
        lines.append(f"| {p['phase']} | {p['state']} | {p['done']}/{p['total']} | {p['complete']} | {p['pruned']} "
                     f"| {p['failed']} | {best} |")
        if p.get("grid") and p["sampler"] == "grid":
            lines.append(f"|  | grid: `{json.dumps(p['grid'])}` | | | | | |")
    best = report.best
    lines.append("")
    if best:
        test = f"{best['test_acc']:.4f}" if best.get("test_acc") is not None else "n/a (no test split)"
        lines += [f"**Winner:** phase `{best['phase']}`, trial {best['trial']}: {report.metric} "
                  f"{best['value']:.4f}, test accuracy {test}, seed {best['seed']}.", "",
                  "```yaml", yaml.safe_dump(report.best_fragment, sort_keys=False).rstrip(), "```", ""]
    lines += [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"


def write_report(report: StudyReport, out: Path) -> list[Path]:
    """Write the plots, ``best_config.yaml`` and ``summary.md`` into ``out``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    drawers = (plot_params, plot_loss, plot_accuracy, plot_history, plot_importances)
    written = []
    for name, draw in zip(PLOTS, drawers):
        draw(report, out / name)
        written.append(out / name)
    if report.best_fragment:
        (out / "best_config.yaml").write_text(yaml.safe_dump(report.best_fragment, sort_keys=False))
        written.append(out / "best_config.yaml")
    (out / "summary.md").write_text(summary_markdown(report))
    written.append(out / "summary.md")
    return written
