"""The plots from plain data: trial numbers on the history's axis, pruned trials counted, categorical axes, titles."""

from __future__ import annotations

import pytest

from hpsearch import report as plots
from hpsearch.engine.driver import StudyReport
from hpsearch.engine.summary import StudySummary


def trial(phase: str, number: int, state: str, value: float | None, **params) -> dict:
    return {"phase": phase, "number": number, "state": state, "value": value, "params": params,
            "datetime_start": f"2026-01-01T00:00:{number:02d}"}


@pytest.fixture
def study() -> StudyReport:
    lrs = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    trials = [trial("random", k, "PRUNED" if k in (1, 4) else "COMPLETE", None if k in (1, 4) else 0.5 + k / 20,
                    learning_rate=lrs[k], batch_size=[50, 100][k % 2], hidden_sizes=[[8], [8, 8]][k % 2])
              for k in range(7)]
    trials += [trial("grid", 0, "COMPLETE", 0.9, learning_rate=0.01, batch_size=100, hidden_sizes=[8]),
               trial("grid", 1, "FAIL", None, learning_rate=0.02, batch_size=100, hidden_sizes=[8]),
               trial("grid", 2, "COMPLETE", 0.8, learning_rate=0.02, batch_size=50, hidden_sizes=[8, 8])]
    return StudyReport(study="s", metric="val_acc", direction="maximize", trials=trials,
                       spaces={"random": {"learning_rate": True, "batch_size": False, "hidden_sizes": False},
                               "grid": {"learning_rate": True}},
                       importances={"random": {"learning_rate": 0.7, "batch_size": 0.3}}, best=None,
                       best_result=None, best_fragment=None,
                       summary=StudySummary(study="s", storage="sqlite:///s.db", complete=False, phases=[], best=None))


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the plots draw, kept for inspection instead of being closed."""
    drawn: list = []
    monkeypatch.setattr(plots._pyplot(), "close", drawn.append)
    return drawn


def test_history_puts_every_trial_at_its_number_and_counts_pruned_ones(study, figures, tmp_path):
    ordered, offsets = plots.history_positions(study)
    assert offsets == [("random", 0), ("grid", 8)]  # random's 0..6, an empty slot, then grid's 0..2
    assert ordered == [("random", k) for k in range(7)] + [("grid", k) for k in range(3)]

    plots.plot_history(study, tmp_path / "h.png")
    (ax,) = figures[0].axes
    dots = {c.get_label(): sorted(x for x, _ in c.get_offsets()) for c in ax.collections}
    assert dots["random"] == [0, 2, 3, 5, 6] and dots["grid"] == [8, 10]
    assert dots["pruned (2)"] == [1, 4] and dots["fail (1)"] == [9]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "random", "grid", "best so far", "pruned (2)", "fail (1)"]
    ticks = {tick: label.get_text() for tick, label in zip(ax.get_xticks(), ax.get_xticklabels())}
    assert ticks[8] == "0" and ticks[10] == "2" and ticks[6] == "6"  # labels are the phases' own trial numbers
    best_line = ax.lines[0]
    assert list(best_line.get_ydata()) == [0.5, 0.6, 0.65, 0.75, 0.8, 0.9, 0.9]  # the best so far, in run order
    assert "val_acc" in figures[0].texts[0].get_text() and (tmp_path / "h.png").stat().st_size > 0


def test_params_with_few_values_or_lists_get_categorical_axes(study, figures, tmp_path):
    plots.plot_params(study, tmp_path / "p.png")
    panels = {ax.get_xlabel(): ax for ax in figures[0].axes if ax.get_xlabel()}
    assert panels["learning_rate"].get_xscale() == "log"  # seven distinct numbers: a numeric axis
    assert [t.get_text() for t in panels["batch_size"].get_xticklabels()] == ["50", "100"]
    assert [t.get_text() for t in panels["hidden_sizes"].get_xticklabels()] == ["[8]", "[8, 8]"]


def test_importances_name_the_metric(study, figures, tmp_path):
    plots.plot_importances(study, tmp_path / "i.png")
    assert figures[0].texts[0].get_text() == "s: importance of each parameter for val_acc (fANOVA)"
    assert figures[0].axes[0].get_xlabel() == "share of the variance of val_acc"


def test_report_writes_every_plot(study, tmp_path):
    written = plots.write_report(study, tmp_path / "out")
    assert [p.name for p in written] == [*plots.PLOTS, "summary.md"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written if p.suffix == ".png")
