"""Comparison plots and a Markdown summary of a study, drawn with matplotlib from plain data.

Used by tracking (as MLflow artifacts) and by ``hpsearch report`` (to a folder). Knows neither Optuna nor MLflow:
its input is a :class:`hpsearch.engine.driver.StudyReport`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from hpsearch.backends.base import replacing

if TYPE_CHECKING:
    from hpsearch.engine.driver import StudyReport

__all__ = ["PLOTS", "history_positions", "report_files", "write_report"]

PLOTS = ("metric_vs_params.png", "best_loss_curve.png", "best_metric_curves.png", "optimization_history.png",
         "param_importances.png")
TEXTS = ("best_config.yaml", "summary.md")


CATEGORICAL_UP_TO = 6  # a parameter with at most this many distinct values gets one column per value


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def _figure(path: Path, size: tuple[float, float], panels: int = 1, cols: int = 1,
            title: str | None = None) -> Iterator[list[Any]]:
    """A figure of ``panels`` axes in ``cols`` columns, yielded as a list; saved to ``path`` and closed afterwards.
    Axes beyond ``panels`` (the last row's remainder) are hidden."""
    plt = _pyplot()
    rows = math.ceil(panels / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    axes = list(grid.flat)
    try:
        for ax in axes[panels:]:
            ax.axis("off")
        yield axes[:panels]
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        with replacing(path.resolve()) as file:
            fig.savefig(file, format=path.suffix.lstrip("."), dpi=90)
    finally:
        plt.close(fig)


def _scored(report: StudyReport) -> list[dict[str, Any]]:
    return [t for t in report.trials if t["state"] == "COMPLETE" and t["value"] is not None
            and math.isfinite(t["value"])]


def _axis_values(values: list[Any]) -> tuple[str, list[Any]]:
    """How to lay out a parameter's values: ("numeric", []) or ("categorical", the categories in axis order).

    Non-numbers (lists such as hidden_sizes, strings, booleans) and whole numbers with few distinct values (a
    batch_size of 50 or 100) are categories: one column each, numbers in increasing order. Other numbers (drawn
    learning rates) keep a linear or log axis.
    """
    distinct = list(dict.fromkeys(json.dumps(v) for v in values))
    if all(_as_number(v) is not None for v in values):
        if len(distinct) > CATEGORICAL_UP_TO or not all(float(v).is_integer() for v in values):
            return "numeric", []
        return "categorical", sorted(dict.fromkeys(values))
    return "categorical", [json.loads(d) for d in distinct]


def plot_params(report: StudyReport, path: Path) -> None:
    """The metric against each searched parameter, one panel per parameter, coloured by phase."""
    names: dict[str, bool] = {}
    for space in report.spaces.values():
        for name, log in space.items():
            names[name] = names.get(name, False) or log
    names = names or {"trial": False}
    scored = _scored(report)
    phases = list(dict.fromkeys(t["phase"] for t in scored))

    def value(trial: dict[str, Any], name: str) -> Any:
        return trial["number"] if name == "trial" else trial["params"].get(name)

    cols = min(3, len(names))
    with _figure(path, (4.5, 3.5), len(names), cols, f"{report.study}: {report.metric} by parameter") as axes:
        for ax, (name, log) in zip(axes, names.items()):
            layout, categories = _axis_values([v for t in scored if (v := value(t, name)) is not None])
            positions = {_category(c): i for i, c in enumerate(categories)}
            for k, phase in enumerate(phases):
                points = [(value(t, name), t["value"]) for t in scored if t["phase"] == phase]
                points = [(x, y) for x, y in points if x is not None]
                if not points:
                    continue
                if layout == "categorical":  # phases side by side within each category's column
                    shift = (k - (len(phases) - 1) / 2) * 0.12
                    points = [(positions[_category(x)] + shift, y) for x, y in points]
                ax.scatter(*zip(*points), label=phase, alpha=0.7, s=18)
            if layout == "categorical" and categories:  # (no scored trial: no categories, an empty panel)
                ax.set_xticks(range(len(categories)), [json.dumps(c) if isinstance(c, list) else str(c)
                                                       for c in categories])
                ax.set_xlim(-0.5, len(categories) - 0.5)
                if any(len(str(c)) > 6 for c in categories):
                    ax.tick_params(axis="x", labelrotation=30)
            elif log:
                ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.set_ylabel(report.metric)
            ax.grid(alpha=0.3)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)


def _category(value: Any) -> float | str:
    """A hashable key under which equal values meet: 50 and 50.0 alike, lists by their JSON."""
    number = _as_number(value)
    return number if number is not None else json.dumps(value)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def plot_loss(report: StudyReport, path: Path) -> None:
    """The best trial's training loss per iteration, as in the assignment's figure (per epoch, for a trainable that
    reports only that)."""
    with _figure(path, (7, 4)) as (ax,):
        result = report.best_result
        losses, step = (result.loss_history, "iteration") if result is not None else ([], "iteration")
        if result is not None and not losses:
            losses, step = result.history.get("loss", []), "epoch"
        ax.plot(range(1, len(losses) + 1), losses, linewidth=0.8, marker="o" if step == "epoch" else None)
        ax.set_xlabel(step)
        ax.set_ylabel("training loss")
        ax.set_title(_best_title(report))
        ax.grid(alpha=0.3)


def plot_curves(report: StudyReport, path: Path) -> None:
    """The best trial's objective per epoch beside its training counterpart (``train_acc`` for ``val_acc``), where
    the trainable reports one: where they part, it overfits."""
    name = report.metric.removeprefix("val_")
    with _figure(path, (7, 4)) as (ax,):
        result = report.best_result
        if result is not None:
            for key, label in ((f"train_{name}", "train"), (report.metric, "val" if report.metric != name else name)):
                values = result.history.get(key) or []
                if values:
                    ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(_best_title(report))
        ax.grid(alpha=0.3)


def _best_title(report: StudyReport) -> str:
    best = report.best
    if not best:
        return f"{report.study}: no complete trial"
    return f"{report.study}: best trial ({best['phase']} #{best['trial']}, {report.metric} {best['value']:.4f})"


def history_positions(report: StudyReport) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Where each trial of the optimisation history sits: phases side by side in the order they ran, one empty
    slot apart, each trial at its phase's offset plus its own trial number. Returns the (phase, number) keys ordered
    by position and each phase's (name, offset)."""
    phases = list(dict.fromkeys([*report.spaces, *(t["phase"] for t in report.trials)]))
    ordered, offsets, offset = [], [], 0
    for phase in phases:
        numbers = sorted(t["number"] for t in report.trials if t["phase"] == phase)
        if not numbers:
            continue
        offsets.append((phase, offset))
        ordered += [(phase, n) for n in numbers]
        offset += numbers[-1] + 2
    return ordered, offsets


def plot_history(report: StudyReport, path: Path) -> None:
    """Every trial at its trial number, phase by phase: scores as dots with the best so far, trials without a
    score (pruned, failed) as marks along the bottom, counted in the legend."""
    by_key = {(t["phase"], t["number"]): t for t in report.trials}
    scored = {(t["phase"], t["number"]) for t in _scored(report)}
    ordered, offsets = history_positions(report)
    start = dict(offsets)
    x = {key: start[key[0]] + key[1] for key in ordered}  # (phase, trial number) -> position on the axis
    pick = max if report.direction == "maximize" else min
    with _figure(path, (9, 4), title=f"{report.study}: optimisation history ({report.metric})") as (ax,):
        for phase, _ in offsets:
            points = [(x[key], by_key[key]["value"]) for key in ordered if key[0] == phase and key in scored]
            if points:
                ax.scatter(*zip(*points), s=14, label=phase, alpha=0.7)
        best_x, best_y = [], []
        for key in (key for key in ordered if key in scored):
            best_x.append(x[key])
            best_y.append(by_key[key]["value"] if not best_y else pick(best_y[-1], by_key[key]["value"]))
        if best_x:
            ax.step(best_x, best_y, where="post", color="black", linewidth=1.2, label="best so far")
        for state, marker in (("PRUNED", "x"), ("FAIL", "v")):
            xs = [x[key] for key in ordered if by_key[key]["state"] == state]
            if xs:  # no score to plot: marked along the bottom edge of the axes
                ax.scatter(xs, [0.0] * len(xs), marker=marker, s=18, color="grey", clip_on=False,
                           transform=ax.get_xaxis_transform(), label=f"{state.lower()} ({len(xs)})")
        for phase, offset in offsets:
            if offset:
                ax.axvline(offset - 1, color="grey", linewidth=0.8, linestyle="--")
            ax.annotate(f"phase {phase}", (offset - 1, 1.0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                        textcoords="offset points", fontsize=8, color="grey")
        ticks = [(offset + n, str(n)) for phase, offset in offsets
                 for n in _round_numbers(max(n for p, n in ordered if p == phase))]
        ax.set_xticks([tick for tick, _ in ticks], [label for _, label in ticks])
        ax.set_xlabel("trial number (each phase numbers its trials from 0)")
        ax.set_ylabel(report.metric)
        if ordered:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)


def _round_numbers(last: int, most: int = 5) -> range:
    """0 to ``last`` in steps of 1, 2, 5, 10, 20, 50, ...: at most ``most`` steps."""
    step = next(m * 10**e for e in itertools.count() for m in (1, 2, 5) if last <= most * m * 10**e)
    return range(0, last + 1, step)


def plot_importances(report: StudyReport, path: Path) -> None:
    """Parameter importances (fANOVA) per phase: how much each parameter explains the metric's variation."""
    phases = {phase: imp for phase, imp in report.importances.items() if imp} or {"(too few trials)": {}}
    title = f"{report.study}: importance of each parameter for {report.metric} (fANOVA)"
    with _figure(path, (5, 3.5), len(phases), len(phases), title) as axes:
        for ax, (phase, importances) in zip(axes, phases.items()):
            ordered = sorted(importances.items(), key=lambda kv: kv[1])
            ax.barh([k for k, _ in ordered], [v for _, v in ordered])
            ax.set_title(f"phase {phase}")
            ax.set_xlabel(f"share of the variance of {report.metric}")


def summary_markdown(report: StudyReport) -> str:
    lines = [f"# Study `{report.study}`", ""]
    lines += ["| phase | state | done/total | complete | pruned | failed | best |", "|---|---|---|---|---|---|---|"]
    for p in report.summary.phases:
        best = f"{p['best_value']:.4f} (trial {p['best_trial']})" if p["best_value"] is not None else "-"
        lines.append(f"| {p['phase']} | {p['state']} | {p['done']}/{p['total']} | {p['complete']} | {p['pruned']} "
                     f"| {p['failed']} | {best} |")
        if p.get("grid") and p["sampler"] == "grid":
            lines.append(f"|  | grid: `{json.dumps(p['grid'])}` | | | | | |")
    best = report.best
    lines.append("")
    if best:
        test_metric = best.get("test_metric", "test_acc")
        test = f"{best[test_metric]:.4f}" if best.get(test_metric) is not None else "n/a (no test score)"
        lines += [f"**Winner:** phase `{best['phase']}`, trial {best['trial']}: {report.metric} "
                  f"{best['value']:.4f}, {test_metric} {test}, seed {best['seed']}.", "",
                  "```yaml", yaml.safe_dump(report.best_fragment, sort_keys=False).rstrip(), "```", ""]
    lines += [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"


def report_files(out: Path) -> list[Path]:
    """Every file :func:`write_report` may write into ``out``."""
    return [out / name for name in (*PLOTS, *TEXTS)]


def write_report(report: StudyReport, out: Path) -> list[Path]:
    """Write the plots, ``best_config.yaml`` and ``summary.md`` into ``out``; return the files written.

    Each file is written whole or not at all (beside its place, then renamed), through a symlink to where it points.
    """
    out.mkdir(parents=True, exist_ok=True)
    drawers = (plot_params, plot_loss, plot_curves, plot_history, plot_importances)
    written = []
    for name, draw in zip(PLOTS, drawers):
        draw(report, out / name)
        written.append(out / name)
    best_config = yaml.safe_dump(report.best_fragment, sort_keys=False) if report.best_fragment else None
    for name, text in zip(TEXTS, (best_config, summary_markdown(report))):
        if text is not None:
            with replacing((out / name).resolve()) as file:
                file.write(text.encode())
            written.append(out / name)
    return written
