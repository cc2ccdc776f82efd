"""The ``hpsearch`` command line: it parses, calls and prints. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from hpsearch.cliargs import (AllowImportOpt, ForceOpt, JsonOpt, MaxTrialsOpt, OneLineErrors, OutputFormat,
                              OverwriteOpt, PhaseOpt, SetOpt, SpecArg, StorageOpt, TimeBoxOpt, TimeoutOpt, TrackingOpt,
                              cannot_write, check_output_file, check_output_folder, check_overwrite, echo_err, fail,
                              interrupted_message, output_path, users_code)
from hpsearch.localworkers import report_stopped, unblock_signals
from hpsearch.errors import UserError
from hpsearch.formatting import format_duration
from hpsearch.output import print_summary, trials_csv

app = typer.Typer(
    cls=OneLineErrors,
    help="Hyperparameter search with experiment tracking: random then grid phases on Optuna, logged to MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_OWN_PROCESS = False  # True when this process is the `hpsearch` command, not a caller of its functions


def main() -> None:
    """The `hpsearch` command: the CLI in a process of its own, which exits when the command is done."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    app(prog_name="hpsearch")


@app.callback()
def _main() -> None:
    """Hyperparameter search with experiment tracking: random then grid phases on Optuna, logged to MLflow."""


@app.command()
def train(
    spec: SpecArg,
    save: Annotated[Optional[Path], typer.Option(
        help="Save the trained model here (.npz for numpy, .pt for torch); `hpsearch predict --model` reloads it.",
        show_default=False)] = None,
    test: Annotated[bool, typer.Option("--test", help="Also score the test split (an error without one).")] = False,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Train once with the spec's defaults and print its metrics (loss, train and validation accuracy) and time."""
    from hpsearch.backends import DivergedError
    from hpsearch.spec import load_spec
    from hpsearch.training import load_data, score_test_split, train_once

    try:
        study = load_spec(spec, set_, allow_import or None)
        trainable = study.trainable
        if save is not None and trainable.save_model is None:
            raise fail(f"--save {save}: the trainable {study.model.backend} cannot save its models (it declares no "
                       "save_model).")
        if save is not None and trainable.model_suffix and save.suffix != trainable.model_suffix:
            raise fail(f"--save {save}: the {study.model.backend} backend saves {trainable.model_suffix} files; "
                       f"give a path ending in {trainable.model_suffix}.")
        data = load_data(study)
        if test and data.X_test is None:
            raise fail(f"--test: the dataset {data.name} of {spec} has no test split.")
        if test and trainable.evaluate is None:
            raise fail(f"--test: the trainable {study.model.backend} cannot score a model (it declares no evaluate).")
        with users_code(spec, study.model.backend):
            result = train_once(study, data)
            if (test or save is not None) and result.model is None:
                raise fail(f"{'--test' if test else '--save'}: the trainable {study.model.backend} returned no model.")
            test_scores = score_test_split(study, data, result) if test else None
        if save is not None:
            save.parent.mkdir(parents=True, exist_ok=True)
            with users_code(spec, study.model.backend, let_through=(OSError,)):
                trainable.save_model(result.model, result.config, save)
    except UserError as exc:
        raise fail(str(exc)) from None
    except DivergedError as exc:
        raise fail(f"{spec}: training diverged: {exc}; lower defaults.learning_rate.") from None
    except OSError as exc:
        raise fail(f"--save {save}: cannot write the model ({exc.strerror or exc}).") from None

    scores = {**result.metrics, **(test_scores or {})}
    if json_:
        typer.echo(json.dumps({
            **scores,
            "loss": result.loss if result.loss_history else result.metrics.get("loss"),
            "seconds": round(result.seconds, 3),
            "epochs": max((len(values) for values in result.history.values()), default=0),
            "iterations": len(result.loss_history),
            "dataset": data.name,
            "data_fingerprint": data.fingerprint,
            "seed": study.seed,
            "config": result.config,
            **({"model": str(save)} if save is not None else {}),
        }))
        return
    typer.echo(f"{study.name}: {study.model.backend} backend on {data.name} "
               f"({len(data.y_train)} train / {len(data.y_val)} val), seed {study.seed}")
    typer.echo(f"config      {json.dumps(result.config)}")
    if result.loss_history:
        typer.echo(f"loss        {result.loss:.4f}")
    for name, value in scores.items():
        typer.echo(f"{name.replace('_', ' '):<11} {value:.4f}")
    typer.echo(f"time        {format_duration(result.seconds)}")
    if save is not None:
        typer.echo(f"saved       {save}  (hpsearch predict {spec} --model {save} --split test)")




def _driver(spec: Path, set_: list[str] | None, storage: str | None, tracking_uri: str | None = None,
            track: bool = False, writable: bool = True, allow_import: bool = False, **kwargs):
    """The study's driver, with MLflow tracking attached when ``track`` and the spec leaves it enabled.

    writable=False for commands that only read the storage: they create neither its folder nor its database.
    """
    from hpsearch import api

    study = api.load(spec, overrides=set_, allow_import=allow_import or None)
    return api.driver(study, storage=storage, tracking=track, tracking_uri=tracking_uri, writable=writable,
                      echo=echo_err, **kwargs)


@app.command()
def run(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes, one BLAS thread each; at most 4 per "
                                         "core unless --allow-many-workers.")] = 1,
    allow_many_workers: Annotated[bool, typer.Option(
        "--allow-many-workers", help="Let --workers go past 4 per core, up to 1024.")] = False,
    phase: PhaseOpt = None,
    timeout: TimeoutOpt = None,
    time_box: TimeBoxOpt = None,
    max_trials: MaxTrialsOpt = None,
    force_new_phase: ForceOpt = False,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run the study's phases in order; rerun the same command to resume after any interruption."""
    request = _Work(spec=spec, storage=storage, tracking_uri=tracking_uri, phase=phase, timeout=timeout,
                    time_box=time_box, max_trials=max_trials, force_new_phase=force_new_phase, overrides=set_,
                    allow_import=allow_import, json=json_)
    if workers > 1:
        from hpsearch.localworkers import check_workers

        try:
            check_workers(workers, allow_many_workers)
        except UserError as exc:
            raise fail(str(exc)) from None
        _run_local_workers(request, workers)
        return
    _work(request)


@app.command()
def worker(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    phase: PhaseOpt = None,
    timeout: TimeoutOpt = None,
    time_box: TimeBoxOpt = None,
    max_trials: MaxTrialsOpt = None,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Join a study and work on whatever its current phase needs until the study is complete.

    Start any number, on any number of machines, in any order, against one shared storage (PostgreSQL for several
    machines; the URL can come from $HPSEARCH_STORAGE so that no password is on a command line).
    """
    _work(_Work(spec=spec, storage=storage, tracking_uri=tracking_uri, phase=phase, timeout=timeout,
                time_box=time_box, max_trials=max_trials, force_new_phase=False, overrides=set_,
                allow_import=allow_import, json=json_))


@dataclass(frozen=True)
class _Work:
    """What `run` or `worker` was asked to do."""

    spec: Path
    storage: str | None
    tracking_uri: str | None
    phase: str | None
    timeout: float | None
    time_box: float | None
    max_trials: int | None
    force_new_phase: bool
    overrides: list[str] | None
    allow_import: bool
    json: bool


def _work(request: _Work) -> None:
    import signal

    from hpsearch import api
    from hpsearch.interrupt import Interrupted, Interruption

    interruption = Interruption()
    try:
        with interruption.installed(restore=not _OWN_PROCESS):
            report_to = unblock_signals()  # a worker of `run --workers`: signals now reach the handler
            result = api.run(request.spec, storage=request.storage, tracking_uri=request.tracking_uri,
                             phase=request.phase, timeout=request.timeout, time_box=request.time_box,
                             max_trials=request.max_trials,
                             force_new_phase=request.force_new_phase, overrides=request.overrides,
                             allow_import=request.allow_import or None, echo=echo_err, interruption=interruption)
    except UserError as exc:
        raise fail(str(exc)) from None
    except (KeyboardInterrupt, Interrupted):
        for sig in (signal.SIGINT, signal.SIGTERM):  # winding down: a second Ctrl-C must not cut the exit short
            signal.signal(sig, signal.SIG_IGN)
        if not report_stopped(report_to, interruption.stopped):  # a worker of `run --workers`: the parent says it
            typer.echo(interrupted_message(interruption.stopped), err=True)
        raise typer.Exit(code=130) from None
    summary = {**result.summary, "spec": str(request.spec)}
    if request.json:
        typer.echo(json.dumps(summary, default=str))
        return
    print_summary(summary)


def _run_local_workers(request: _Work, workers: int) -> None:
    """``run --workers N``: N ``hpsearch worker`` processes on this machine, each on one BLAS/OpenMP thread."""
    import os
    import sys

    from hpsearch.api import tracking_database
    from hpsearch.driver import Driver, check_run
    from hpsearch.interrupt import Interruption
    from hpsearch.localworkers import run_workers
    from hpsearch.spec import load_spec
    from hpsearch.storage import chosen_storage_url, refuse_foreign_database, resolve_storage_url
    from hpsearch.training import load_data

    interruption = Interruption()
    try:
        with interruption.installed(restore=True):  # Ctrl-C before the workers start: one line, nothing changed
            study = load_spec(request.spec, request.overrides, request.allow_import or None)
            # refused once, here, and before anything is created, rather than by N workers
            _, data = check_run(study, request.phase, lambda: load_data(study))
            interruption.check()
            tracking_database(study, chosen_storage_url(request.storage, study.storage, study.name),
                              request.tracking_uri)
            url = resolve_storage_url(request.storage, study.storage, study.name)
            refuse_foreign_database(url)
            interruption.check()
            if request.force_new_phase:  # decide the new phases once, here, rather than in N racing workers
                Driver(study, url, echo=echo_err, force_new_phase=True, data=data).prepare()
            del data  # each worker loads its own
            interruption.check()
    except UserError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:  # Interrupted too
        typer.echo("Interrupted before any worker started; nothing was trained. Rerun the same command to resume.",
                   err=True)
        raise typer.Exit(code=130) from None
    # -P: the working directory is not put first on sys.path, so workers import what the `hpsearch` command imports
    command = [sys.executable, "-P", "-m", "hpsearch", "worker", str(request.spec)]
    for item in request.overrides or []:
        command += ["--set", item]
    if request.allow_import:
        command.append("--allow-import")
    for flag, value in (("--tracking-uri", request.tracking_uri), ("--phase", request.phase),
                        ("--timeout", request.timeout), ("--time-box", request.time_box),
                        ("--max-trials", request.max_trials)):
        if value is not None:
            command += [flag, str(value)]
    env = {**os.environ, "HPSEARCH_STORAGE": url, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    try:
        codes, interrupted, stopped = run_workers(command, env, workers)
    except UserError as exc:
        raise fail(str(exc)) from None
    if interrupted or stopped:  # a signal to this process, or to a worker whose trial it stopped
        others = [code for code in codes if code not in (0, 130)]
        line = interrupted_message(stopped, workers=sum(code == 130 for code in codes))
        if others:
            line += f" {len(others)} other workers ended otherwise (exit codes {others}): see above."
        typer.echo(line, err=True)
        raise typer.Exit(code=130)
    if any(code == 2 for code in codes):
        raise typer.Exit(code=2)  # each worker already said why, in one line
    if any(code != 0 for code in codes):
        raise fail(f"{sum(code != 0 for code in codes)} of {workers} workers failed (exit codes {codes}).")
    _status(request.spec, url, request.overrides, request.allow_import, request.json, request.tracking_uri,
            only_phase=request.phase)


@app.command()
def status(spec: SpecArg, storage: StorageOpt = None, set_: SetOpt = None, allow_import: AllowImportOpt = False,
           json_: JsonOpt = False) -> None:
    """Per phase: state, trials complete/pruned/failed/running, grid coverage and best value."""
    _status(spec, storage, set_, allow_import, json_)


def _status(spec: Path, storage: str | None, set_: list[str] | None, allow_import: bool, json_: bool,
            tracking_uri: str | None = None, only_phase: str | None = None) -> None:
    from hpsearch.storage import mask_url, register_secret_url
    from hpsearch.tracking import resolve_tracking_uri

    try:
        driver = _driver(spec, set_, storage, writable=False, allow_import=allow_import)
        summary = driver.status(only_phase)
        uri = resolve_tracking_uri(driver.spec, driver.url, tracking_uri)
        register_secret_url(uri)
        summary["tracking"] = ({"uri": mask_url(uri), "experiment": driver.spec.tracking.experiment or driver.spec.name}
                               if uri else None)
    except UserError as exc:
        raise fail(str(exc)) from None
    if json_:
        typer.echo(json.dumps(summary, default=str))
    else:
        print_summary(summary)


@app.command()
def best(
    spec: SpecArg,
    storage: StorageOpt = None,
    format_: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.yaml,
    output: Annotated[Optional[Path], typer.Option(help="Write to this file instead of stdout.",
                                                   parser=output_path("--output", "file"))] = None,
    force: OverwriteOpt = False,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
) -> None:
    """The best configuration as a re-runnable spec: `hpsearch train` on it trains the winning trial again."""
    import yaml

    from hpsearch.spec import best_fragment

    if output is not None:
        check_output_file(output, "--output")
    try:
        driver = _driver(spec, set_, storage, writable=False, allow_import=allow_import)
        if output is not None:
            check_overwrite("--output", output, [output], _kept(spec, driver.url), force)
        found = driver.best()
    except UserError as exc:
        raise fail(str(exc)) from None
    if found is None:
        raise fail(f"{spec}: no complete trial yet; run the study first.")
    fragment = best_fragment(driver.spec, found)
    text = (json.dumps(fragment, indent=2) + "\n" if format_ == OutputFormat.json
            else yaml.safe_dump(fragment, sort_keys=False))
    if output is None:
        typer.echo(text, nl=False)
    else:
        _write("--output", output, text)
        typer.echo(f"wrote {output}", err=True)


def _kept(spec: Path, storage_url: str) -> dict[Path, str]:
    """What an output never overwrites, --force or not: the spec being read, the study storage's files and the
    MLflow database a run keeps beside a SQLite storage by default."""
    from hpsearch.storage import mask_url, sqlite_path, storage_files

    kept = {path: f"kept by the study storage {mask_url(storage_url)!r}" for path in storage_files(storage_url)}
    database = sqlite_path(storage_url)
    if database is not None:
        kept[database.parent / "mlflow.db"] = "MLflow's database beside the study storage"
    return {spec: "the spec being read", **kept}


def _write(option: str, output: Path, text: str) -> None:
    """Write ``text`` whole or not at all (beside the file, then renamed), through a symlink to where it points."""
    from hpsearch.backends.base import replacing

    try:
        with replacing(output.resolve()) as file:
            file.write(text.encode())
    except OSError as exc:
        raise cannot_write(option, output, exc) from None


@app.command()
def plan(spec: SpecArg, set_: SetOpt = None, allow_import: AllowImportOpt = False, json_: JsonOpt = False) -> None:
    """Validate the spec and print each phase's size and estimated run time, without touching the storage."""
    from hpsearch.plan import plan as make_plan
    from hpsearch.plan import since_process_start
    from hpsearch.spec import load_spec
    from hpsearch.training import load_data

    try:
        study = load_spec(spec, set_, allow_import or None)
        report = make_plan(study, load_data(study), startup_seconds=since_process_start())
    except UserError as exc:
        raise fail(str(exc)) from None
    if json_:
        typer.echo(json.dumps(report))
        return
    probe = report["probe"]
    typer.echo(f"study {report['study']}: a probe of {probe['trials']} short trials: "
               f"{format_duration(probe['train_seconds'])} of training each, "
               f"{format_duration(probe['trial_overhead_seconds'])} more per trial")
    for p in report["phases"]:
        size = f"{'at most ' if p['trials_upper_bound'] else ''}{p['trials']} trials"
        halving = f", each level's best 1/{p['halving']} going on" if "halving" in p else ""
        trained = f" (trained as {p['ladders']} ladders{halving})" if "ladders" in p else ""
        typer.echo(f"  {p['phase']:<12} {p['sampler']:<7} {size:<22} ≈ {format_duration(p['estimated_seconds'])}"
                   f"{trained}")
    once = format_duration(report["run_fixed_seconds"])
    typer.echo(f"  {'(once)':<12} {'':<7} {'start, retrain winner':<22} ≈ {once}")
    tracking = ", plus MLflow tracking" if study.tracking.enabled else ""
    typer.echo(f"  total ≈ {format_duration(report['estimated_seconds'])} on one process{tracking}")


@app.command()
def export(
    spec: SpecArg,
    output: Annotated[Path, typer.Option(help="FILE.csv or FILE.json.", show_default=False,
                                         parser=output_path("--output", "file"))],
    force: OverwriteOpt = False,
    storage: StorageOpt = None,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
) -> None:
    """Write every trial (phase, number, state, value, params, metrics, duration) to CSV or JSON."""
    if output.suffix not in (".csv", ".json"):
        raise fail(f"--output {output}: give a .csv or .json file.")
    check_output_file(output, "--output")
    try:
        driver = _driver(spec, set_, storage, writable=False, allow_import=allow_import)
        check_overwrite("--output", output, [output], _kept(spec, driver.url), force)
        rows = driver.trials()
    except UserError as exc:
        raise fail(str(exc)) from None
    _write("--output", output, json.dumps(rows, indent=1, default=str) if output.suffix == ".json"
           else trials_csv(rows))
    typer.echo(f"wrote {len(rows)} trials to {output}", err=True)


@app.command()
def report(
    spec: SpecArg,
    out: Annotated[Path, typer.Option(help="Folder for the plots, best_config.yaml and summary.md.",
                                      parser=output_path("--out", "folder"))],
    force: OverwriteOpt = False,
    storage: StorageOpt = None,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
) -> None:
    """Write the comparison plots and a Markdown summary of the study to a folder, without MLflow."""
    from hpsearch.report import report_files, write_report

    check_output_folder(out, "--out")
    try:
        driver = _driver(spec, set_, storage, writable=False, allow_import=allow_import)
        check_overwrite("--out", out, report_files(out), _kept(spec, driver.url), force)
        data = driver.report()
    except UserError as exc:
        raise fail(str(exc)) from None
    if data is None or data.best is None:
        raise fail(f"{spec}: no complete trial yet; run the study first.")
    try:
        written = write_report(data, out)
    except OSError as exc:
        raise cannot_write("--out", out, exc) from None
    for path in written:
        typer.echo(str(path))


@app.command()
def sync(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
) -> None:
    """Rebuild in MLflow what it missed (runs of trials logged while it was down, runs left RUNNING)."""
    from hpsearch.driver import SharedState

    try:
        driver = _driver(spec, set_, storage, tracking_uri, track=True, allow_import=allow_import)
        if driver.listener.__class__.__name__ != "MlflowTracker":
            raise fail(f"{spec}: tracking is disabled in the spec (tracking.enabled: false).")
        status = driver.status()
        phases = {p["phase"]: {"study_name": p["study_name"]} for p in status["phases"] if p.get("study_name")}
        report = driver.report() if status["complete"] else None
        counts = driver.listener.sync(SharedState(driver.url, driver.spec.name), driver.trials(), phases, report)
    except UserError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"synced {spec}: {counts['created']} runs created, {counts['ended']} runs ended")


@app.command()
def predict(
    spec: SpecArg,
    model: Annotated[Path, typer.Option(help="A model file saved by a study (MLflow artifact model/best_model.*).")],
    split: Annotated[str, typer.Option(help="Which split of the spec's data to score: train, val or test.")] = "val",
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Reload a saved model and report its scores (accuracy, for the built-in backends) on a split of the data."""
    from hpsearch.backends import ModelFileError
    from hpsearch.spec import load_spec
    from hpsearch.training import load_data

    if split not in ("train", "val", "test"):
        raise fail(f"--split {split!r}: choose train, val or test.")
    try:
        study = load_spec(spec, set_, allow_import or None)
        trainable = study.trainable
        if trainable.load_model is None or trainable.evaluate is None:
            raise fail(f"{spec}: the trainable {study.model.backend} cannot reload and score a model (it declares no "
                       "load_model and evaluate).")
        data = load_data(study)
        if not model.is_file():
            raise fail(f"{model}: model file not found (the study run's artifact model/best_model"
                       f"{trainable.model_suffix or ''} in MLflow).")
        try:
            net, config = trainable.load_model(model)
        except (OSError, ModelFileError) as exc:
            raise fail(f"{model}: not a {study.model.backend} model file saved by a study ({exc}).") from None
    except UserError as exc:
        raise fail(str(exc)) from None
    X, y = getattr(data, f"X_{split}"), getattr(data, f"y_{split}")
    if X is None:
        raise fail(f"{spec}: the dataset has no {split} split.")
    inputs = getattr(net, "input_size", X.shape[1])
    if inputs != X.shape[1]:
        raise fail(f"{model}: the model takes {inputs} inputs per sample; {data.name} as the spec loads it "
                   f"has {X.shape[1]}.")
    scores = dict(trainable.evaluate(net, X, y))
    if json_:
        accuracy = {"accuracy": scores["acc"]} if "acc" in scores else {}
        typer.echo(json.dumps({"split": split, **accuracy, "scores": scores, "n": len(y), "config": config}))
    else:
        shown = ", ".join(f"{'accuracy' if name == 'acc' else name} {value:.4f}" for name, value in scores.items())
        typer.echo(f"{split} {shown} on {len(y)} samples")
