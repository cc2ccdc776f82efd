"""The ``hpsearch`` command line: the Typer app and its commands, in the order ``--help`` lists them.

It parses, calls and prints; heavy imports happen inside the commands (:mod:`~hpsearch.cli.running`,
:mod:`~hpsearch.cli.study`)."""

from __future__ import annotations

import typer

from hpsearch.cli import running, study
from hpsearch.cli.options import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,
    help="Hyperparameter search with experiment tracking: random then grid phases on Optuna, logged to MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (running.train, running.run, running.worker, study.status, study.best, study.plan, study.export,
                study.report, study.sync, study.predict):
    app.command()(command)


def main() -> None:
    """The `hpsearch` command: the CLI in a process of its own, which exits when the command is done."""
    running.OWN_PROCESS = True
    app(prog_name="hpsearch")


@app.callback()
def _main() -> None:
    """Hyperparameter search with experiment tracking: random then grid phases on Optuna, logged to MLflow."""
