"""Results answer a command's questions from one snapshot of the study: the whole-study reads of a ``run`` and a
``status``, counted in-process (no subprocess: reads are what is measured, and a driver in this process shows them).

A *whole read* of a phase is a view's first look at its trials (every row) or the first read of its trials in full
(params, metrics, histories); a catch-up that reads only the trials changed since the last look is not one. The point
queue's enqueue reads its phase's rows under the queue's lock, to enqueue each point exactly once; that read is the
queue's own and is not counted here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from hpsearch.engine.budget import Budget
from hpsearch.engine.driver import Driver
from hpsearch.engine.listener import StudyListener
from hpsearch.engine.phaseview import PhaseView
from hpsearch.engine.results import Results
from hpsearch.spec.build import load_spec
from tests.conftest import write_spec


class Mending(StudyListener):
    """A listener that, like MLflow's, wants the stored trials and the full report."""

    wants_report = True  # and, defining on_existing_trials, it wants the stored trials

    def __init__(self) -> None:
        self.existing: list[int] = []
        self.reports: list[Any] = []

    def on_existing_trials(self, trials, phases) -> None:
        self.existing.append(len(trials))

    def on_study_end(self, summary, report) -> None:
        self.reports.append(report)


@pytest.fixture
def whole_reads(monkeypatch) -> Counter[str]:
    """Whole reads by phase name, as the module docstring defines them."""
    reads: Counter[str] = Counter()
    refresh, read_whole = PhaseView.refresh, Results._read_whole

    def counted_refresh(view: PhaseView, full: bool = False, *, exact: bool = False) -> None:
        if view.study_id is not None and (full or view._seen is None):
            reads[view.phase.name] += 1
        refresh(view, full, exact=exact)

    def counted_trials(results: Results, phase, study_name: str):
        reads[phase.name] += 1
        return read_whole(results, phase, study_name)

    monkeypatch.setattr(PhaseView, "refresh", counted_refresh)
    monkeypatch.setattr(Results, "_read_whole", counted_trials)
    return reads


def _driver(tmp_path, listener: StudyListener | None = None) -> Driver:
    spec = load_spec(write_spec(tmp_path, "counted"))
    return Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", listener=listener, echo=lambda message: None)


@pytest.mark.parametrize("listener", [None, Mending], ids=["tracking off", "mending listener"])
def test_a_resumed_run_reads_each_phase_whole_at_most_twice(tmp_path, whole_reads, listener):
    with _driver(tmp_path) as first:
        first.run(Budget(max_trials=3))  # stopped inside the random phase: the next run resumes it
        stored = len(first.results.trials())  # 3 finished, the phase's other points queued
    whole_reads.clear()
    mending = listener() if listener else None
    with _driver(tmp_path, mending) as driver:
        summary = driver.run()
        trials = driver.results.trials()  # what the API's result reads last
    assert summary.complete
    assert set(whole_reads) == {"random", "grid"} and max(whole_reads.values()) <= 2, whole_reads
    if mending is not None:  # the mending listener got every trial at the start and at the end, and the report
        assert mending.existing == [stored, len(trials)] and stored < len(trials)
        assert mending.reports[-1] is not None and mending.reports[-1].trials == trials


def test_status_reads_each_phase_whole_once_and_a_run_of_a_complete_study_twice(tmp_path, whole_reads):
    with _driver(tmp_path) as driver:
        driver.run()
    whole_reads.clear()
    with _driver(tmp_path) as driver:
        status = driver.status()
    assert status.complete and whole_reads == Counter({"random": 1, "grid": 1})
    whole_reads.clear()
    with _driver(tmp_path, Mending()) as driver:
        assert driver.run().complete
        driver.results.trials()
    assert whole_reads == Counter({"random": 2, "grid": 2})


def test_the_summary_is_one_typed_object_that_the_json_output_writes_whole(tmp_path):
    """Every part of a run's summary is a declared field, filled by the layer that knows it, none added as a key."""
    import dataclasses
    import json

    from hpsearch import api
    from hpsearch.engine.summary import StudySummary

    with _driver(tmp_path) as driver:
        summary = driver.run(Budget(max_trials=2))
    assert isinstance(summary, StudySummary) and not summary.complete and summary.time_box is None
    assert summary.phase("random")["done"] == 2 and summary.phase("grid")["state"] == "pending"
    assert summary.best is not None and summary.examples == 2 * 20 * 50  # two trials of 20 iterations of 50
    result = api.run(write_spec(tmp_path, "counted"), storage=f"sqlite:///{tmp_path / 'study.db'}", tracking=False,
                     echo=lambda line: None)
    written = json.loads(json.dumps(result.summary.as_dict()))
    assert set(written) == {f.name for f in dataclasses.fields(StudySummary)}
    assert written["complete"] and written["wall_seconds"] > 0 and written["tracking"] is None
    assert written["phases"] == result.summary.phases and written["best"]["trial"] == result.summary.best["trial"]
