"""The commands that train: ``train`` once, ``run`` a study (in this process or ``--workers N``), ``worker``."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from hpsearch.cli.localworkers import report_stopped, unblock_signals
from hpsearch.cli.options import (AllowImportOpt, ForceOpt, JsonOpt, MaxTrialsOpt, PhaseOpt, SetOpt, SpecArg,
                                  StorageOpt, TimeBoxOpt, TimeoutOpt, TrackingOpt, echo_err, fail, interrupted_message,
                                  users_code)
from hpsearch.cli.output import print_summary
from hpsearch.cli.study import show_status
from hpsearch.errors import UserError
from hpsearch.formatting import format_duration

if TYPE_CHECKING:
    from hpsearch.cli.placement import Placement, WorkersEnded
    from hpsearch.cli.progress import StudyProgress
    from hpsearch.spec.models import StudySpec

OWN_PROCESS = False  # True when this process is the `hpsearch` command, not a caller of its functions (see app.main)


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
    from hpsearch.engine.training import load_data, score_test_split, train_once
    from hpsearch.spec.build import load_spec

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


def run(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, the cores split between them; on this "
                                         "machine at most 4 per core unless --allow-many-workers.")] = 1,
    allow_many_workers: Annotated[bool, typer.Option(
        "--allow-many-workers", help="Let --workers go past 4 per core, up to 1024.")] = False,
    gpus: Annotated[Optional[str], typer.Option(
        help="GPUs to hand out, as CUDA_VISIBLE_DEVICES takes them (0,1,2,3): each worker sees its own "
             "(resources.gpus_per_worker each, default 1).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(
        min=1, max=1024, help="Threads of each worker's BLAS, OpenMP and torch (default: the cores split between "
                              "the workers).", show_default=False)] = None,
    ray: Annotated[Optional[str], typer.Option(
        help="Let Ray place the --workers, each a task asking for its threads and GPUs: `auto` (the cluster this "
             "machine is part of), HOST:PORT, ray://HOST:10001, or `local` (an instance for this run). Needs "
             "pip install 'hpsearch[ray]'.", show_default=False)] = None,
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
    if ray is not None or workers > 1 or gpus is not None or threads is not None:  # shares set before they start
        from hpsearch.cli.localworkers import LocalWorkers, check_workers
        from hpsearch.engine.resources import parse_gpus

        try:
            devices = parse_gpus(gpus) if gpus is not None else None
            if ray is None:
                check_workers(workers, allow_many_workers)
                placement: Placement = LocalWorkers(workers, devices, threads)
            else:
                from hpsearch.cli.rayworkers import RayWorkers

                placement = RayWorkers(ray, workers, devices, threads)
        except UserError as exc:
            raise fail(str(exc)) from None
        _run_workers(request, placement)
        return
    _work(request)


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
    from hpsearch.engine.interrupt import Interrupted, Interruption

    interruption = Interruption()
    try:
        with interruption.installed(restore=not OWN_PROCESS):
            report_to = unblock_signals()  # a worker of `run --workers`: signals now reach the handler
            study = api.load(request.spec, overrides=request.overrides, allow_import=request.allow_import or None)
            progress = _terminal_progress(study, request) if report_to is None else None
            try:
                with progress.watching() if progress else contextlib.nullcontext():
                    result = api.run(study, storage=request.storage, tracking_uri=request.tracking_uri,
                                     phase=request.phase, timeout=request.timeout, time_box=request.time_box,
                                     max_trials=request.max_trials, force_new_phase=request.force_new_phase,
                                     interruption=interruption, echo=progress.echo if progress else echo_err,
                                     progress_lines=report_to is None)  # a worker's parent shows its progress
                if progress:
                    progress.update()  # the counts the run ended with: what the summary below shows
            finally:
                if progress:
                    progress.close()  # the bars end before any line that says why the run stopped
    except UserError as exc:
        raise fail(str(exc)) from None
    except (KeyboardInterrupt, Interrupted):
        for sig in (signal.SIGINT, signal.SIGTERM):  # winding down: a second Ctrl-C must not cut the exit short
            signal.signal(sig, signal.SIG_IGN)
        if not report_stopped(report_to, interruption.stopped):  # a worker of `run --workers`: the parent says it
            typer.echo(interrupted_message(interruption.stopped), err=True)
        raise typer.Exit(code=130) from None
    summary = result.summary
    summary.spec = str(request.spec)
    if request.json:
        typer.echo(json.dumps(summary.as_dict(), default=str))
        return
    print_summary(summary)


def _terminal_progress(study: StudySpec, request: _Work) -> StudyProgress | None:
    """On a terminal, the study's progress as ``run --workers`` shows it, a live bar per phase, here below the trial
    lines of this process; it counts other workers' trials too. None elsewhere, and where the storage URL is wrong
    (the run says why)."""
    import sys

    if not sys.stderr.isatty():
        return None
    from hpsearch.cli.progress import StudyProgress
    from hpsearch.storage.urls import chosen_storage_url

    try:
        url = chosen_storage_url(request.storage, study.storage, study.name)  # checked and made by the run
    except UserError:
        return None
    progress = StudyProgress(study, url, echo_err, only_phase=request.phase, terminal=True)
    progress.start(resuming=False)  # the run says where a resumed phase stands
    return progress


def _run_workers(request: _Work, placement: Placement) -> None:
    """``run --workers N`` (or ``--ray``): N ``hpsearch worker`` processes, placed on this machine (each with its
    share of the GPUs and cores, see :mod:`hpsearch.engine.resources`) or by Ray; this process shows their progress
    from the storage, and the study's status once they are done."""
    import sys

    from hpsearch.api import tracking_database
    from hpsearch.cli.progress import StudyProgress
    from hpsearch.engine.driver import Driver, check_run
    from hpsearch.engine.interrupt import Interruption
    from hpsearch.engine.training import load_data
    from hpsearch.spec.build import load_spec
    from hpsearch.storage.urls import chosen_storage_url, refuse_foreign_database, resolve_storage_url

    interruption = Interruption()
    progress = None
    try:
        with interruption.installed(restore=True):  # Ctrl-C before the workers start: one line, nothing changed
            study = load_spec(request.spec, request.overrides, request.allow_import or None)
            # refused once, here, and before anything is created, rather than by N workers
            _, data = check_run(study, request.phase, lambda: load_data(study))
            chosen = chosen_storage_url(request.storage, study.storage, study.name)
            placement.plan(study, chosen, interruption.check)  # each worker's share, before anything is made
            interruption.check()
            placement.check_tracking(tracking_database(study, chosen, request.tracking_uri))
            url = resolve_storage_url(request.storage, study.storage, study.name)
            refuse_foreign_database(url)
            interruption.check()
            if request.force_new_phase:  # decide the new phases once, here, rather than in N racing workers
                with Driver(study, url, echo=echo_err, force_new_phase=True, data=data) as driver:
                    driver.prepare()
            del data  # each worker loads its own
            interruption.check()
            # one view of the study's progress, read from its storage, instead of a counter per worker
            progress = StudyProgress(study, url, echo_err, only_phase=request.phase, terminal=sys.stderr.isatty())
            progress.start()
            interruption.check()
    except UserError as exc:
        placement.close()
        raise fail(str(exc)) from None
    except KeyboardInterrupt:  # Interrupted too
        placement.close()
        if progress is not None:
            progress.close()
        typer.echo("Interrupted before any worker started; nothing was trained. Rerun the same command to resume.",
                   err=True)
        raise typer.Exit(code=130) from None
    try:
        with progress.watching():
            ended = placement.run(_worker_args(request), {"HPSEARCH_STORAGE": url})
        if not (ended.interrupted or ended.stopped):
            progress.update()  # the counts the workers ended with: what the summary below shows
    except UserError as exc:
        raise fail(str(exc)) from None
    finally:
        progress.close()
        placement.close()
    _say_how_workers_ended(ended, placement.workers)
    show_status(request.spec, url, request.overrides, request.allow_import, request.json, request.tracking_uri,
                only_phase=request.phase)


def _worker_args(request: _Work) -> list[str]:
    """The arguments of ``hpsearch worker`` that do what ``request`` asks."""
    args = ["worker", str(request.spec)]
    for item in request.overrides or []:
        args += ["--set", item]
    if request.allow_import:
        args.append("--allow-import")
    for flag, value in (("--tracking-uri", request.tracking_uri), ("--phase", request.phase),
                        ("--timeout", request.timeout), ("--time-box", request.time_box),
                        ("--max-trials", request.max_trials)):
        if value is not None:
            args += [flag, str(value)]
    return args


def _say_how_workers_ended(ended: WorkersEnded, workers: int) -> None:
    """Nothing where every worker finished; else the one line that says how they ended, and the exit code."""
    codes = ended.codes
    for line in ended.notes:
        echo_err(line)
    if ended.interrupted or ended.stopped:  # a signal to this process, or to a worker whose trial it stopped
        others = [code for code in codes if code not in (0, 130, None)]
        line = interrupted_message(ended.stopped, workers=sum(code == 130 for code in codes))
        if others:
            line += f" {len(others)} other workers ended otherwise (exit codes {others}): see above."
        typer.echo(line, err=True)
        raise typer.Exit(code=130)
    if any(code == 2 for code in codes):
        raise typer.Exit(code=2)  # each worker already said why, in one line
    if any(code != 0 for code in codes):
        raise fail(f"{sum(code != 0 for code in codes)} of {workers} workers failed (exit codes {codes}).")
