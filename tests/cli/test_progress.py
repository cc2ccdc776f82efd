"""The watching process's view of a study's progress (``hpsearch.cli.progress``), in-process on a real SQLite
storage: what it says before the workers start, a line only when a phase's counts change, never a failure of its
own. A driver's runs stand in for the workers."""

from __future__ import annotations

from hpsearch.cli.progress import StudyProgress, progress_line
from hpsearch.engine.budget import Budget
from hpsearch.engine.driver import Driver
from hpsearch.spec.build import load_spec
from tests.conftest import write_spec

GRID = [{"name": "grid", "sampler": "grid", "grid": {"learning_rate": [0.02, 0.04, 0.06, 0.08]}}]


def _status(**changes) -> dict:
    return {"phase": "grid", "state": "running", "done": 26, "total": 54, "complete": 20, "pruned": 3, "failed": 1,
            "running": 2, "best_value": 0.97331, **changes}


def test_a_progress_line_says_every_count_that_is_not_zero_the_best_and_the_eta():
    assert progress_line(_status(), 12.0) == \
        "[grid] 26/54: 20 complete, 3 pruned, 1 failed, 2 running, best 0.9733, ETA 12 s"
    assert progress_line(_status(pruned=0, failed=0, best_value=None, total=None), None) == \
        "[grid] 26/?: 20 complete, 2 running"
    assert progress_line(_status(state="complete", running=0), 3.0).endswith("0 running, best 0.9733")  # no ETA


def test_the_view_says_where_a_resumed_study_stands_then_only_what_changes(tmp_path):
    spec = load_spec(write_spec(tmp_path, phases=GRID))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with Driver(spec, url, echo=lambda line: None) as worker:
        worker.run(Budget(max_trials=1))
    said: list[str] = []
    progress = StudyProgress(spec, url, said.append)
    try:
        progress.start()
        assert said == ["[grid] resuming: 1 of 4 done"]
        progress.update()
        assert said == ["[grid] resuming: 1 of 4 done"]  # nothing changed: nothing said
        with Driver(spec, url, echo=lambda line: None) as worker:
            worker.run()
        progress.update()
        assert len(said) == 2 and said[-1].startswith("[grid] 4/4: 4 complete, 0 running, best ")
    finally:
        progress.close()


def test_a_storage_that_cannot_be_read_yet_shows_nothing_and_raises_nothing(tmp_path):
    spec = load_spec(write_spec(tmp_path, phases=GRID))
    said: list[str] = []
    progress = StudyProgress(spec, f"sqlite:///{tmp_path / 'missing' / 'study.db'}", said.append)
    progress.start()
    progress.update()
    progress.close()
    assert said == []
