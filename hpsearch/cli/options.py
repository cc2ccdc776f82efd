"""The command line's shared options, the checks of its arguments, and how it fails: one line on stderr, exit 2."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Mapping, Optional

import typer
from typer.core import TyperGroup

from hpsearch import arguments
from hpsearch.errors import UserError

SpecArg = Annotated[Path, typer.Argument(help="The study spec (YAML).", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a spec value: KEY.PATH=VALUE, the value read as YAML. Repeatable."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
AllowImportOpt = Annotated[bool, typer.Option(
    "--allow-import", help="Let model.backend / data.dataset import modules from outside the installed packages and "
    "the spec's folder (importing runs their code). Also: HPSEARCH_ALLOW_IMPORT=1.")]


StorageOpt = Annotated[
    Optional[str],
    typer.Option("--storage", show_default=False,
                 help="Study storage URL (default: $HPSEARCH_STORAGE, the spec's, sqlite:///runs/NAME.db)."),
]


class OutputFormat(str, Enum):
    yaml = "yaml"
    json = "json"


TrackingOpt = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the spec's, "
                 "sqlite:///mlflow.db beside a SQLite storage).", show_default=False),
]


def fail(message: str) -> typer.Exit:
    """Print one line on stderr, every known password masked; the caller raises the returned Exit (code 2)."""
    from hpsearch.storage.urls import mask_url

    typer.echo(mask_url(f"error: {message}"), err=True)
    return typer.Exit(code=2)


# the usage errors of the click that Typer runs on (recent Typer has a copy of its own): what typer.BadParameter is
_UsageError = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "UsageError")


def _flags_without_a_type() -> None:
    """Typer's help shows a type beside every option, ``<bool>`` beside a flag (--json, --help) too, where there is
    no value to give: flags show none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_a_type()


class OneLineErrors(TyperGroup):
    """The app's commands, whose usage errors (an unknown option, ``--workers 0``, ``--max-trials 1e3``) are one line
    on stderr and exit code 2, like every other error, rather than click's usage box."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        if not args:  # `hpsearch` alone prints the help
            return super().make_context(info_name, args, parent, **extra)
        with _one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:
        with _one_line_errors():  # a command's own options are parsed here
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except _UsageError as exc:
        message = " ".join(exc.format_message().split()).rstrip(".")
        raise fail(f"{message}; see '{exc.ctx.command_path} --help'." if exc.ctx is not None else f"{message}.") \
            from None


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work is done, an output file that cannot be written."""
    import os

    if path.is_dir():
        raise fail(f"{option} {path}: is a folder; give a file name.")
    if not path.parent.is_dir():
        raise fail(f"{option} {path}: the folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise fail(f"{option} {path}: not writable.")


def output_path(option: str, kind: str) -> Callable[[str | Path], Path]:
    """An option's parser that refuses an empty path, which would otherwise mean the working directory."""

    def parse(value: str | Path) -> Path:
        if value == "":
            raise fail(f"{option} must name a {kind}. Got '' instead.")
        return Path(value)

    return parse


def check_overwrite(option: str, given: Path, targets: Iterable[Path], kept: Mapping[Path, str], force: bool) -> None:
    """Refuse, before any work is done, to write over what the study keeps, --force or not, and over an existing
    file without --force.

    given: the path as the option gave it. targets: the files the command would write for it. kept: a file or folder
    (whatever is in it counts too) that is never overwritten, with what it is (``the spec being read``).
    """
    from hpsearch.storage.urls import same_file

    targets = list(targets)

    def named(target: Path) -> str:
        return "that file" if target == given else str(target)

    for target in targets:
        for path, what in kept.items():
            if same_file(target, path) or path.resolve() in target.resolve().parents:
                raise fail(f"{option} {given}: {named(target)} is {what}; --force never overwrites it. "
                           "Give another path.")
    existing = [target for target in targets if target.exists()]
    if len(existing) == 1 and not force:
        raise fail(f"{option} {given}: {named(existing[0])} already exists; give --force to overwrite it.")
    if existing and not force:
        raise fail(f"{option} {given}: {existing[0]} and {len(existing) - 1} more of its files already exist; "
                   "give --force to overwrite them.")


def check_output_folder(path: Path, option: str) -> None:
    """Refuse, before any work is done, an output folder that cannot be made or written."""
    import os

    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise fail(f"{option} {path}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK):
        raise fail(f"{option} {path}: {existing} is not writable.")


def cannot_write(option: str, path: Path, exc: OSError) -> typer.Exit:
    return fail(f"{option} {path}: cannot write ({exc.strerror or exc}).")


@contextlib.contextmanager
def users_code(spec: Path, backend: str, let_through: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """A trainable's own exception: its traceback, then one line naming it, exit 2 (a study would fail the trial);
    running out of memory is that line alone.

    let_through: exceptions the caller reports itself (an OSError while saving a model: the path is the problem).
    """
    from hpsearch.backends import DivergedError
    from hpsearch.errors import format_traceback, one_line

    try:
        yield
    except (UserError, DivergedError, typer.Exit, *let_through):
        raise
    except MemoryError as exc:  # a configuration too big for this machine (hidden_size: 1e9), not a bug to trace
        raise fail(f"{spec}: the trainable {backend} ran out of memory ({one_line(exc)}); train a smaller "
                   "configuration.") from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's function raises
        typer.echo(format_traceback(exc).rstrip(), err=True)
        raise fail(f"{spec}: the trainable {backend} raised {one_line(exc)}") from None


def interrupted_message(stopped: list[str], workers: int | None = None) -> str:
    """The one line an interrupted run ends with: which trials the signal stopped (each is failed and retried on the
    next run, using up no retry), or that it came between trials."""
    who = f"Interrupted: {workers} workers stopped" if workers else "Interrupted"
    if not stopped:
        return f"{who} between trials; nothing was lost. Rerun the same command to resume."
    trials = f"{stopped[0]} was" if len(stopped) == 1 else f"{', '.join(stopped[:-1])} and {stopped[-1]} were"
    return (f"{who}; {trials} running: marked failed, to be trained again on the next run. Rerun the same command to "
            "resume.")


def echo_err(message: str) -> None:
    typer.echo(message, err=True)


def checked(check: Callable[[Any, str], Any], option: str) -> Callable[[Any], Any]:
    """A check of :mod:`hpsearch.arguments` as an option's callback, naming the option as the command line spells
    it; a value it refuses is the command's one error line."""

    def callback(value: Any) -> Any:
        try:
            return check(value, option)
        except UserError as exc:
            raise fail(str(exc)) from None

    return callback


PhaseOpt = Annotated[Optional[str], typer.Option(help="Run only this phase.")]
TimeoutOpt = Annotated[Optional[float], typer.Option(help="Stop starting trials after this many seconds.",
                                                     callback=checked(arguments.time_limit, "--timeout"))]
# the callback turns the text into seconds (a float), which the commands receive
TimeBoxOpt = Annotated[Optional[str], typer.Option(
    metavar="DURATION", callback=checked(arguments.duration, "--time-box"),
    help="Aim to end within this time (seconds, or 55m, 1h) with the best trial so far scored on the test split: a "
         "trial starts only while it fits, as long as the median of the phase's recent trials. Default: the spec's "
         "time_box.")]
MaxTrialsOpt = Annotated[Optional[int], typer.Option(help="Start at most this many trials in this run.",
                                                     callback=checked(arguments.trial_count, "--max-trials"))]
ForceOpt = Annotated[
    bool, typer.Option(help="Start changed phases afresh instead of refusing; stored trials are kept.")
]
OverwriteOpt = Annotated[bool, typer.Option(
    "--force", help="Overwrite existing files (never the spec being read nor the study storage's files).")]
