"""The commands that read a stored study (``status``, ``best``, ``plan``, ``export``, ``report``, ``sync``) and a
saved model (``predict``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from hpsearch.cli.options import (AllowImportOpt, JsonOpt, OutputFormat, OverwriteOpt, SetOpt, SpecArg, StorageOpt,
                                  TrackingOpt, cannot_write, check_output_file, check_output_folder, check_overwrite,
                                  echo_err, fail, output_path)
from hpsearch.cli.output import print_summary, trials_csv
from hpsearch.errors import UserError
from hpsearch.formatting import format_duration


def driver_for(spec: Path, set_: list[str] | None, storage: str | None, tracking_uri: str | None = None,
               track: bool = False, writable: bool = True, allow_import: bool = False, **kwargs):
    """The study's driver, with MLflow tracking attached when ``track`` and the spec leaves it enabled.

    writable=False for commands that only read the storage: they create neither its folder nor its database.
    """
    from hpsearch import api

    study = api.load(spec, overrides=set_, allow_import=allow_import or None)
    return api.driver(study, storage=storage, tracking=track, tracking_uri=tracking_uri, writable=writable,
                      echo=echo_err, **kwargs)


def status(spec: SpecArg, storage: StorageOpt = None, set_: SetOpt = None, allow_import: AllowImportOpt = False,
           json_: JsonOpt = False) -> None:
    """Per phase: state, trials complete/pruned/failed/running, grid coverage and best value."""
    show_status(spec, storage, set_, allow_import, json_)


def show_status(spec: Path, storage: str | None, set_: list[str] | None, allow_import: bool, json_: bool,
            tracking_uri: str | None = None, only_phase: str | None = None) -> None:
    from hpsearch.engine.summary import TrackingRef
    from hpsearch.storage.urls import mask_url, register_secret_url
    from hpsearch.tracking import resolve_tracking_uri

    try:
        driver = driver_for(spec, set_, storage, writable=False, allow_import=allow_import)
        summary = driver.status(only_phase)
        uri = resolve_tracking_uri(driver.spec, driver.url, tracking_uri)
        register_secret_url(uri)
        experiment = driver.spec.tracking.experiment or driver.spec.name
        summary.tracking = TrackingRef(uri=mask_url(uri), experiment=experiment) if uri else None
        summary.spec = str(spec)
    except UserError as exc:
        raise fail(str(exc)) from None
    if json_:
        typer.echo(json.dumps(summary.as_dict(), default=str))
    else:
        print_summary(summary)


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

    from hpsearch.spec.build import best_fragment

    if output is not None:
        check_output_file(output, "--output")
    try:
        driver = driver_for(spec, set_, storage, writable=False, allow_import=allow_import)
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
    from hpsearch.storage.connections import storage_files
    from hpsearch.storage.urls import mask_url, sqlite_path

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


def plan(spec: SpecArg, set_: SetOpt = None, allow_import: AllowImportOpt = False, json_: JsonOpt = False) -> None:
    """Validate the spec and print each phase's size and estimated run time, without touching the storage."""
    from hpsearch.engine.plan import plan as make_plan
    from hpsearch.engine.plan import since_process_start
    from hpsearch.engine.training import load_data
    from hpsearch.spec.build import load_spec

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
        halving = (f", each level's best 1/{p['halving']} going on" if "halving" in p else
                   f", each rung's best 1/{p['asha']} going on as they end" if "asha" in p else "")
        trained = f" (trained as {p['ladders']} ladders{halving})" if "ladders" in p else ""
        typer.echo(f"  {p['phase']:<12} {p['sampler']:<7} {size:<22} ≈ {format_duration(p['estimated_seconds'])}"
                   f"{trained}")
    once = format_duration(report["run_fixed_seconds"])
    end = "start, retrain winner" if report["winner_trained_again"] else "start, score winner"
    typer.echo(f"  {'(once)':<12} {'':<7} {end:<22} ≈ {once}")
    tracking = ", plus MLflow tracking" if study.tracking.enabled else ""
    typer.echo(f"  total ≈ {format_duration(report['estimated_seconds'])} on one process{tracking}")


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
        driver = driver_for(spec, set_, storage, writable=False, allow_import=allow_import)
        check_overwrite("--output", output, [output], _kept(spec, driver.url), force)
        rows = driver.trials()
    except UserError as exc:
        raise fail(str(exc)) from None
    _write("--output", output, json.dumps(rows, indent=1, default=str) if output.suffix == ".json"
           else trials_csv(rows))
    typer.echo(f"wrote {len(rows)} trials to {output}", err=True)


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
        driver = driver_for(spec, set_, storage, writable=False, allow_import=allow_import)
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


def sync(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    set_: SetOpt = None,
    allow_import: AllowImportOpt = False,
) -> None:
    """Rebuild in MLflow what it missed (runs of trials logged while it was down, runs left RUNNING)."""
    from hpsearch.storage.records import SharedState

    try:
        driver = driver_for(spec, set_, storage, tracking_uri, track=True, allow_import=allow_import)
        if driver.listener.__class__.__name__ != "MlflowTracker":
            raise fail(f"{spec}: tracking is disabled in the spec (tracking.enabled: false).")
        status = driver.status()
        phases = {p["phase"]: {"study_name": p["study_name"]} for p in status.phases if p.get("study_name")}
        report = driver.report if status.complete else None  # made only where MLflow lacks it
        counts = driver.listener.sync(SharedState(driver.url, driver.spec.name), driver.trials(), phases, report)
    except UserError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"synced {spec}: {counts['created']} runs created, {counts['ended']} runs ended")


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
    from hpsearch.engine.training import load_data
    from hpsearch.spec.build import load_spec

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
