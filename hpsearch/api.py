"""hpsearch from Python, for notebooks and scripts: load a spec, run it, read its result.

    import hpsearch

    result = hpsearch.run("studies/quickstart.yaml")           # or a dict, the same keys as the YAML
    result.best_config, result.best_value, result.test_scores  # the winner
    result.trials                                              # one dict per trial: pandas.DataFrame(result.trials)

The same storage, resume and tracking as the command line, which is a thin layer over these functions: running a
finished study again returns its result without training; an interrupted one resumes where it stopped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from hpsearch import arguments
from hpsearch.backends.base import scores_on_test
from hpsearch.engine.summary import StudySummary, TrackingRef
from hpsearch.errors import SpecError
from hpsearch.spec.build import build_spec, load_spec
from hpsearch.spec.document import apply_override, parse_override
from hpsearch.spec.models import StudySpec

__all__ = ["StudyResult", "driver", "load", "run", "status", "trials"]

def load(spec: str | Path | Mapping[str, Any] | StudySpec, *, overrides: list[str] | None = None,
         allow_import: bool | None = None, base_dir: str | Path | None = None) -> StudySpec:
    """A validated spec from a YAML file, a mapping (``base_dir`` is then where relative data paths and the user's
    modules are found; without it, relative paths are the working directory's, and modules come from installed
    packages only), or a spec already loaded.

    overrides: ``KEY.PATH=VALUE`` strings, as ``--set`` takes them. allow_import: see ``--allow-import``
    (None: ``$HPSEARCH_ALLOW_IMPORT``). Raises :class:`hpsearch.errors.UserError` with a one-line message.
    """
    spec = arguments.spec_source(spec)
    overrides = arguments.overrides(overrides, "overrides")
    allow_import = arguments.flag(allow_import, "allow_import", optional=True)
    arguments.optional_path(base_dir, "base_dir")
    if isinstance(spec, StudySpec):
        if overrides:
            raise SpecError("overrides apply to a spec file or mapping, not to a loaded StudySpec.")
        return spec
    if isinstance(spec, Mapping):
        from hpsearch.plugins import allow_import_from_env

        raw = dict(spec)
        for item in overrides or []:
            path, value = parse_override(item)
            apply_override(raw, path, value, item)
        allowed = allow_import_from_env() if allow_import is None else allow_import
        # without base_dir, the working directory resolves relative paths but is no trusted place for modules
        return build_spec(raw, "<dict>", Path(base_dir) if base_dir is not None else Path.cwd(), allowed,
                          modules_from_base_dir=base_dir is not None)
    return load_spec(spec, overrides, allow_import)


def driver(study: StudySpec, *, storage: str | None = None, tracking: bool = False, tracking_uri: str | None = None,
           writable: bool = True, echo: Callable[[str], None] | None = None, **kwargs: Any) -> Any:
    """The study's :class:`~hpsearch.engine.driver.Driver` on its resolved storage, with MLflow tracking attached when
    ``tracking`` and the spec leaves it enabled. ``writable=False`` creates neither a storage folder nor a database."""
    from hpsearch.engine.driver import Driver
    from hpsearch.storage.urls import chosen_storage_url, refuse_foreign_database, resolve_storage_url

    _check_where(storage, tracking_uri)
    echo = echo or _stderr
    uri = tracking_database(study, chosen_storage_url(storage, study.storage, study.name), tracking_uri) \
        if tracking else None  # refused before the storage's folder is made
    url = resolve_storage_url(storage, study.storage, study.name, writable=writable)
    refuse_foreign_database(url)
    listener = None
    if uri:
        from hpsearch.tracking import MlflowTracker

        listener = MlflowTracker(study, uri, echo=echo)
    return Driver(study, url, echo=echo, listener=listener, **kwargs)


def tracking_database(study: StudySpec, storage_url: str, tracking_uri: str | None) -> str | None:
    """The MLflow tracking URI a run of ``study`` on ``storage_url`` uses (None: tracking off), its password
    registered for masking; UserError for one that names the study storage."""
    from hpsearch.storage.urls import register_secret_url
    from hpsearch.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(study, storage_url, tracking_uri)
    register_secret_url(uri)
    return uri


@dataclass
class StudyResult:
    """What a run of a study ended with.

    best_*: the winning trial (None before any trial completed). test_scores: the winner's scores on the test split
    (``test_acc``, ...), measured once when the study completes or a time box ends a run. trials: one dict per trial
    (phase, number, state, value, params, metrics, failure, ...). summary: the typed
    :class:`~hpsearch.engine.summary.StudySummary`; ``summary.as_dict()`` is what ``hpsearch run --json`` prints.
    """

    study: str
    complete: bool
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any] | None
    best_config: dict[str, Any] | None
    best_seed: int | None
    test_scores: dict[str, float]
    trials: list[dict[str, Any]]
    summary: StudySummary = field(repr=False)
    storage: str = ""

    @property
    def test_value(self) -> float | None:
        """The winner's test score on the objective's metric (``test_acc`` for ``val_acc``), if measured."""
        best = self.summary.best or {}
        return best.get(best.get("test_metric", ""))


def run(spec: str | Path | Mapping[str, Any] | StudySpec, *, storage: str | None = None, tracking: bool = True,
        tracking_uri: str | None = None, phase: str | None = None, timeout: float | None = None,
        max_trials: int | None = None, time_box: float | str | None = None, force_new_phase: bool = False,
        overrides: list[str] | None = None, allow_import: bool | None = None, base_dir: str | Path | None = None,
        echo: Callable[[str], None] | None = None, interruption: Any = None,
        progress_lines: bool = True) -> StudyResult:
    """Run the study's phases in order (``hpsearch run``); call it again to resume.

    timeout: no trial starts after this many seconds. time_box (seconds, or '55m', '1h'; default the spec's
    ``time_box``): the run aims to end within it with the best trial so far scored on the test split (an estimate
    from the median of the phase's recent trials: see :class:`hpsearch.engine.driver.Budget`).

    base_dir: for a spec given as a mapping, where its relative paths and modules are (default: relative paths from
    the working directory, modules from installed packages only). echo: where progress lines go (default stderr).
    progress_lines: a line per trial and a resumed phase's header on ``echo``; False where another process shows the
    study's progress (the parent of ``run --workers``). Ctrl-C raises KeyboardInterrupt after the running trial is
    marked failed (it is retried on the next run). Bad input raises :class:`hpsearch.errors.UserError`.
    """
    import time

    from hpsearch.engine.driver import Budget, check_run
    from hpsearch.engine.interrupt import Interruption
    from hpsearch.engine.training import load_data
    from hpsearch.storage.urls import mask_url

    timeout = arguments.time_limit(timeout, "timeout")
    max_trials = arguments.trial_count(max_trials, "max_trials")
    box = arguments.duration(time_box, "time_box")
    _check_where(storage, tracking_uri)
    arguments.optional_text(phase, "phase", "a phase's name")
    arguments.flag(tracking, "tracking")
    arguments.flag(force_new_phase, "force_new_phase")
    arguments.flag(progress_lines, "progress_lines")
    arguments.optional_function(echo, "echo")
    study = load(spec, overrides=overrides, allow_import=allow_import, base_dir=base_dir)
    _, data = check_run(study, phase, lambda: load_data(study))  # a run refused here creates no storage
    own = interruption is None
    interruption = interruption or Interruption()
    with interruption.installed() if own else contextlib.nullcontext(), \
            driver(study, storage=storage, tracking=tracking, tracking_uri=tracking_uri, echo=echo,
                   force_new_phase=force_new_phase, interruption=interruption, data=data,
                   progress_lines=progress_lines) as work:
        started = time.perf_counter()
        summary = work.run(Budget(timeout=timeout, max_trials=max_trials,
                                  time_box=study.time_box if box is None else box), only_phase=phase)
        interruption.check()  # a signal during the study's last steps still means "interrupted"
        summary.wall_seconds = round(time.perf_counter() - started, 3)
        tracker = work.listener
        if hasattr(tracker, "uri"):
            scored = (summary.best or {}).get("data_fingerprint") is not None  # scored at the end, or a box's
            model = tracker.saved_model(work.phases.shared()) if summary.complete or scored else None
            summary.tracking = TrackingRef(uri=mask_url(tracker.uri), experiment=tracker.experiment,
                                           experiment_id=tracker.experiment_id(work.phases.shared()),
                                           seconds=round(tracker.seconds, 3), model=str(model) if model else None)
        return _result(study, work, summary)


def status(spec: str | Path | Mapping[str, Any] | StudySpec, *, storage: str | None = None,
           overrides: list[str] | None = None, allow_import: bool | None = None,
           base_dir: str | Path | None = None) -> StudyResult:
    """The study as stored (``hpsearch status``), without running anything."""
    _check_where(storage)
    study = load(spec, overrides=overrides, allow_import=allow_import, base_dir=base_dir)
    with driver(study, storage=storage, writable=False) as work:
        return _result(study, work, work.status())


def trials(spec: str | Path | Mapping[str, Any] | StudySpec, *, storage: str | None = None,
           overrides: list[str] | None = None, allow_import: bool | None = None,
           base_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every stored trial of every phase, one dict each (``hpsearch export``)."""
    _check_where(storage)
    study = load(spec, overrides=overrides, allow_import=allow_import, base_dir=base_dir)
    with driver(study, storage=storage, writable=False) as work:
        return work.trials()


def _check_where(storage: Any, tracking_uri: Any = None) -> None:
    """Refuse, before anything is read, a storage URL or tracking URI that is no string."""
    arguments.optional_text(storage, "storage", "a database URL")
    arguments.optional_text(tracking_uri, "tracking_uri", "an MLflow tracking URI")


def _result(study: StudySpec, work: Any, summary: StudySummary) -> StudyResult:
    from hpsearch.storage.urls import mask_url

    best = summary.best or {}
    return StudyResult(
        study=study.name, complete=summary.complete, metric=study.objective.metric,
        direction=study.objective.direction or "maximize", best_value=best.get("value"),
        best_params=best.get("params"), best_config=best.get("config"), best_seed=best.get("seed"),
        test_scores=scores_on_test(best),
        trials=work.results.trials(), summary=summary, storage=mask_url(work.url),  # the spec was checked
    )


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)
