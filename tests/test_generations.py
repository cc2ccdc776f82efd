"""A study started afresh (``--force-new-phase``) while another process still runs its old spec: the old process
stops with one line at its next claim, phase creation or result, and old and new trials never mix. The commands that
only read a study (status, best, export, report) refuse a spec other than the one it ran with.

In-process: the other process's restart happens inside a listener hook of the first, at a chosen moment, so no test
waits on another process.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from hpsearch.cli.app import app
from hpsearch.engine.driver import Budget, Driver
from hpsearch.engine.listener import StudyListener
from hpsearch.errors import SpecError
from hpsearch.spec.build import load_spec
from hpsearch.storage.records import StateTable
from tests.conftest import TINY_STUDY, write_spec

runner = CliRunner()


class _RestartAt(StudyListener):
    """Runs ``restart()`` once, when the first trial of ``phase`` ends (``at="trial"``) or the phase ends."""

    def __init__(self, phase: str, restart, at: str = "trial") -> None:
        self.phase, self.restart, self.at, self.done = phase, restart, at, False

    def _maybe(self, phase) -> None:
        if phase.name == self.phase and not self.done:
            self.done = True
            self.restart()

    def on_trial_end(self, phase, trial, result, reason, progress) -> None:
        if self.at == "trial":
            self._maybe(phase)

    def on_phase_end(self, phase, status) -> None:
        if self.at == "phase":
            self._maybe(phase)


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def _restart_with(spec: Path, tmp_path: Path, overrides: list[str], trials: int):
    """Another process's `run SPEC --set ... --force-new-phase --max-trials N`."""
    def restart() -> None:
        Driver(load_spec(spec, overrides), _url(tmp_path), echo=lambda m: None,
               force_new_phase=True).run(Budget(max_trials=trials))
    return restart


def _layout(tmp_path: Path) -> dict:
    import sqlalchemy

    engine = sqlalchemy.create_engine(_url(tmp_path))
    try:
        return StateTable(_url(tmp_path), engine).get("tiny", "layout")
    finally:
        engine.dispose()


def _trials(tmp_path: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=_url(tmp_path)).get_trials(deepcopy=False)


def test_an_old_spec_stops_at_its_next_claim_when_the_study_was_started_afresh(tmp_path):
    spec = write_spec(tmp_path)
    restart = _restart_with(spec, tmp_path, ["defaults.num_iters=40"], trials=2)
    old = Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None, listener=_RestartAt("random", restart))
    with pytest.raises(SpecError, match=r"changed under this run: .*defaults\.num_iters: 20 -> 40.* keeps its "
                                        r"finished trials"):
        old.run()
    layout = _layout(tmp_path)
    assert layout["generation"] == 2 and list(layout["phases"]) == ["random"]
    assert layout["phases"]["random"]["study"] == "tiny.random.v2"
    # the old run claimed nothing after the restart: one trial of its own (its other points stay queued in its
    # study, which no record names any more), the new generation's two
    assert [t.state.name for t in _trials(tmp_path, "tiny.random") if t.state.name != "WAITING"] == ["COMPLETE"]
    assert [t.state.name for t in _trials(tmp_path, "tiny.random.v2") if t.state.name != "WAITING"] == ["COMPLETE"] * 2


def test_an_old_spec_does_not_derive_its_grid_from_the_new_generation(tmp_path):
    spec = write_spec(tmp_path)
    restart = _restart_with(spec, tmp_path, ["defaults.num_iters=40"], trials=3)
    old = Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None,
                 listener=_RestartAt("random", restart, at="phase"))
    with pytest.raises(SpecError, match="changed under this run"):
        old.run()
    layout = _layout(tmp_path)
    assert "grid" not in layout["phases"]  # no grid phase derived from random.v2 and stored under the new generation
    assert layout["context"]["defaults"]["num_iters"] == 40


def test_an_old_phase_definition_stops_when_another_process_restarts_the_phase(tmp_path):
    spec = write_spec(tmp_path)
    (tmp_path / "other").mkdir()
    random, grid = TINY_STUDY["phases"]
    wider = {**random, "space": {**random["space"], "hidden_size": {"type": "int", "low": 4, "high": 32, "step": 4}}}
    changed = write_spec(tmp_path / "other", phases=[wider, grid])  # the same study, its random phase widened

    def restart() -> None:
        Driver(load_spec(changed), _url(tmp_path), echo=lambda m: None,
               force_new_phase=True).run(Budget(max_trials=1))

    old = Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None, listener=_RestartAt("random", restart))
    with pytest.raises(SpecError, match=r"phase 'random': space\.hidden_size\.high: 16\.0 -> 32\.0"):
        old.run()
    assert [t.state.name for t in _trials(tmp_path, "tiny.random") if t.state.name != "WAITING"] == ["COMPLETE"]
    assert _layout(tmp_path)["phases"]["random"]["study"] == "tiny.random.v2"


def test_two_runs_restarting_alike_go_on_together(tmp_path):
    """A process whose spec is the new generation's follows it: the same restart twice is no conflict."""
    spec = write_spec(tmp_path)
    Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None).run(Budget(max_trials=2))
    overrides = ["defaults.num_iters=40"]
    restart = _restart_with(spec, tmp_path, overrides, trials=1)
    first = Driver(load_spec(spec, overrides), _url(tmp_path), echo=lambda m: None, force_new_phase=True,
                   listener=_RestartAt("random", restart))
    summary = first.run()
    assert summary.complete and _layout(tmp_path)["generation"] == 2


def test_read_only_commands_refuse_a_spec_the_study_did_not_run_with(tmp_path):
    spec = write_spec(tmp_path)
    Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None).run()
    before = (tmp_path / "study.db").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    for command in (["status"], ["best"], ["export", "--output", str(out / "t.csv")], ["report", "--out", str(out)]):
        result = runner.invoke(app, [command[0], str(spec), "--storage", _url(tmp_path), *command[1:],
                                     "--set", "defaults.std=0.5"])
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.count("\n") == 1 and "defaults.std: 0.01 -> 0.5" in result.stderr, result.stderr
        assert "was run with" in result.stderr
    assert list(out.iterdir()) == [] and (tmp_path / "study.db").read_bytes() == before
    assert runner.invoke(app, ["best", str(spec), "--storage", _url(tmp_path)]).exit_code == 0


def test_status_of_the_old_spec_after_a_restart_is_refused_not_shown_with_the_new_winner(tmp_path):
    spec = write_spec(tmp_path)
    Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None).run()
    Driver(load_spec(spec, ["defaults.num_iters=40"]), _url(tmp_path), echo=lambda m: None,
           force_new_phase=True).run()
    result = runner.invoke(app, ["status", str(spec), "--storage", _url(tmp_path)])
    assert result.exit_code == 2 and "defaults.num_iters: 40 -> 20" in result.stderr, result.output
    shown = runner.invoke(app, ["status", str(spec), "--storage", _url(tmp_path), "--set", "defaults.num_iters=40"])
    assert shown.exit_code == 0, shown.output


def test_an_old_phase_stops_when_run_workers_force_new_phase_retires_it_before_any_worker_recreates_it(tmp_path):
    """`run --workers N --force-new-phase` retires a changed phase in the parent (its record goes, the generation
    moves) before its workers create it again: a run of the old definition notices at its next claim, even though no
    record contradicts it yet, and the new phase never takes up the old one's study."""
    spec = write_spec(tmp_path)
    (tmp_path / "other").mkdir()
    random, grid = TINY_STUDY["phases"]
    wider = {**random, "space": {**random["space"], "hidden_size": {"type": "int", "low": 4, "high": 32, "step": 4}}}
    changed = write_spec(tmp_path / "other", phases=[wider, grid])

    def retire() -> None:  # the parent of `run --workers N --force-new-phase`
        Driver(load_spec(changed), _url(tmp_path), echo=lambda m: None, force_new_phase=True).prepare()

    old = Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None, listener=_RestartAt("random", retire))
    with pytest.raises(SpecError, match="phase 'random' was started afresh"):
        old.run()
    Driver(load_spec(changed), _url(tmp_path), echo=lambda m: None).run(Budget(max_trials=1))  # a worker
    layout = _layout(tmp_path)
    assert layout["phases"]["random"]["study"] == "tiny.random.v2" and layout["retired"] == ["tiny.random"]
    assert [t.state.name for t in _trials(tmp_path, "tiny.random") if t.state.name != "WAITING"] == ["COMPLETE"]


def test_a_retired_empty_study_is_not_taken_up_by_the_new_generation(tmp_path):
    """A study whose process has not queued anything yet is empty, yet still that process's: the new generation's
    phase gets a name of its own."""
    spec = write_spec(tmp_path)
    first = Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None)
    first.phases.layout.check_context(first.data.fingerprint)
    first.phases.open(load_spec(spec).phases[0])  # created, nothing queued yet
    Driver(load_spec(spec, ["defaults.num_iters=40"]), _url(tmp_path), echo=lambda m: None,
           force_new_phase=True).run(Budget(max_trials=1))
    assert _layout(tmp_path)["phases"]["random"]["study"] == "tiny.random.v2"
    with pytest.raises(SpecError, match="changed under this run"):
        first.phases.layout.follow()


def test_a_run_of_one_phase_ends_with_its_summary_when_another_phase_was_edited(tmp_path):
    """`run --phase random` checks the phase it runs; its summary must not be refused for the grid phase's edit."""
    from hpsearch import api

    spec = write_spec(tmp_path)
    Driver(load_spec(spec), _url(tmp_path), echo=lambda m: None).run()
    result = api.run(spec, storage=_url(tmp_path), tracking=False, phase="random", echo=lambda m: None,
                     overrides=["phases.0.n_trials=7", "phases.1.grid.points=3"])
    assert result.summary.phases[0]["done"] == 7 and len([t for t in result.trials if t["phase"] == "random"]) == 7
