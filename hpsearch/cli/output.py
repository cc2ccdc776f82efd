"""What the CLI prints and writes for people: a study's summary, and its trials as CSV."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from hpsearch.formatting import format_bytes, format_duration, format_value, wrap_items

if TYPE_CHECKING:
    from hpsearch.engine.summary import StudySummary

__all__ = ["print_summary", "trials_csv"]

# MLflow 3's UI opens an experiment on its GenAI overview unless told the workflow. Oldest runs first: the UI shows 100
# runs a page and fetches one level of missing parents, so newest first a long phase's run sits cut off from its study;
# oldest first, a run's parents come before it (not where tracking began after some trials: their runs, made later by
# the mending, keep their trials' earlier start times).
RUNS_TABLE = "workflowType=machine_learning&orderByKey=attributes.start_time&orderByAsc=true"


def print_summary(summary: StudySummary) -> None:
    """The phases' table, the winner and where to look: a rich table on a terminal; elsewhere (logs, CI, pipes),
    where rich would cut the table at 80 columns, plain aligned columns and lines that are never wrapped."""
    from rich.console import Console

    console = Console()
    title = f"study {summary.study}  ({summary.storage})"
    header = ("phase", "state", "done/total", "complete", "pruned", "failed", "running", "best")
    rows = []
    for p in summary.phases:
        best = f"{p['best_value']:.4f} (trial {p['best_trial']})" if p["best_value"] is not None else "-"
        rows.append((p["phase"], p["state"], f"{p['done']}/{p['total'] if p['total'] is not None else '?'}",
                     str(p["complete"]), str(p["pruned"]), str(p["failed"]), str(p["running"]), best))
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)

        def say(line: str) -> None:
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    else:
        say = typer.echo
        say(title)
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            say("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    best = summary.best
    if best:
        test_metric = best.get("test_metric", "test_acc")
        if best.get(test_metric) is not None:
            test = f", {test_metric} {best[test_metric]:.4f}"
        elif best.get("test_failure"):
            test = f", no {test_metric}: {best['test_failure']}"
        elif summary.complete:
            test = f", no {test_metric} (no test split, or a trainable without evaluate)"
        else:  # the final evaluation on the test split runs once, when every phase is complete
            test = f", {test_metric} after the study completes"
        say(f"winner: phase {best['phase']!r} trial {best['trial']}: {best['metric']} {best['value']:.4f}{test}")
        for line in wrap_items("  config:", [f"{key}={format_value(value)}" for key, value in best["config"].items()]):
            say(line)
        say(f"  seed: {best['seed']}  (`hpsearch best` writes the exact values as a spec)")
        if best.get("trained_again"):
            say(f"  trained again to be scored: {best['trained_again']}")
    elif summary.complete:
        say("no winner: no trial completed (`hpsearch export` lists every trial with its failure)")
    for p in summary.phases:
        if p["failed_points"]:
            say(f"phase {p['phase']!r}: points {p['failed_points']} failed after all retries")
    if summary.examples:
        say(f"compute: {summary.examples:,} training examples processed")
    paused = summary.paused_runs
    if paused:
        say(f"paused runs: {format_bytes(paused.bytes)} in {paused.folder}, kept for the halving levels to come "
            "(removed when their phase completes)")
    tracking = summary.tracking
    if tracking:
        spent = ""
        if tracking.seconds and summary.wall_seconds:
            spent = f" (the tracking process spent {format_duration(tracking.seconds)} in MLflow calls)"
        say(f"MLflow experiment {tracking.experiment!r}{spent}:")
        say(f"  mlflow ui --backend-store-uri {tracking.uri}")
        if tracking.experiment_id:
            server = tracking.uri.rstrip("/") if tracking.uri.startswith(("http://", "https://")) \
                else "http://127.0.0.1:5000"
            say(f"  then {server}/#/experiments/{tracking.experiment_id}/runs?{RUNS_TABLE}  (the runs table)")
        if tracking.model and summary.spec:  # the test split where the winner was scored (a dataset may have none)
            split = "test" if best and best.get(best.get("test_metric", "test_acc")) is not None else "val"
            say(f"  hpsearch predict {summary.spec} --model {tracking.model} --split {split}")
    say(f"  optuna-dashboard {summary.storage}")


NOT_IN_CSV = ("epoch_history", "traceback")  # per-epoch curves and tracebacks: in the JSON export only


def trials_csv(rows: list[dict]) -> str:
    """Every trial a row of plain cells, to sort in a spreadsheet and load as numbers: its params in ``param_<name>``
    columns and its final metrics in ``metric_<name>`` columns of their own (a list or mapping param as JSON text);
    the per-epoch histories and tracebacks are in the JSON export."""
    import csv
    import io

    params = sorted({name for row in rows for name in row["params"]})
    metrics = sorted({name for row in rows for name in (row.get("metrics") or {})})
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    columns = [c for c in (rows[0] if rows else {"phase": 0}) if c not in ("params", "metrics", *NOT_IN_CSV)]
    writer.writerow(columns + [f"param_{n}" for n in params] + [f"metric_{n}" for n in metrics])
    for row in rows:
        cells = [json.dumps(row[c]) if isinstance(row[c], (dict, list)) else row[c] for c in columns]
        values = [row["params"].get(n, "") for n in params]
        scores = [(row.get("metrics") or {}).get(n, "") for n in metrics]
        writer.writerow(cells + [json.dumps(v) if isinstance(v, (dict, list)) else v for v in values]
                        + [v if isinstance(v, (int, float, str)) else json.dumps(v) for v in scores])
    return text.getvalue()
