"""The ``hpsearch`` command line: it parses, calls and prints. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hpsearch.errors import UserError

app = typer.Typer(
    help="Hyperparameter search with experiment tracking: random then grid phases on Optuna, logged to MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecArg = Annotated[Path, typer.Argument(help="The study spec (YAML).", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a spec value: KEY.PATH=VALUE, the value read as YAML. Repeatable."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


@app.callback()
def _main() -> None:
    """Hyperparameter search with experiment tracking: random then grid phases on Optuna, logged to MLflow."""


def fail(message: str) -> typer.Exit:
    """Print one line on stderr; the caller raises the returned Exit (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@app.command()
def train(spec: SpecArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Train once with the spec's defaults and print loss, train and validation accuracy and seconds."""
    from hpsearch.backends import DivergedError
    from hpsearch.spec import load_spec
    from hpsearch.training import load_data, train_once

    try:
        study = load_spec(spec, set_)
        data = load_data(study)
        result = train_once(study, data)
    except UserError as exc:
        raise fail(str(exc)) from None
    except DivergedError as exc:
        raise fail(f"{spec}: training diverged: {exc}; lower defaults.learning_rate.") from None

    if json_:
        typer.echo(json.dumps({
            "val_acc": result.val_acc,
            "train_acc": result.train_acc,
            "loss": result.loss,
            "seconds": round(result.seconds, 3),
            "epochs": len(result.val_acc_history),
            "iterations": len(result.loss_history),
            "dataset": data.name,
            "data_fingerprint": data.fingerprint,
            "seed": study.seed,
            "config": result.config,
        }))
        return
    typer.echo(f"{study.name}: {study.model.backend} backend on {data.name} "
               f"({len(data.y_train)} train / {len(data.y_val)} val), seed {study.seed}")
    typer.echo(f"config      {json.dumps(result.config)}")
    typer.echo(f"loss        {result.loss:.4f}")
    typer.echo(f"train acc   {result.train_acc:.4f}")
    typer.echo(f"val acc     {result.val_acc:.4f}")
    typer.echo(f"seconds     {result.seconds:.2f}")


def main() -> None:  # pragma: no cover - console script entry for `python -m hpsearch`
    app()
    sys.exit(0)
