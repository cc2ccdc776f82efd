"""The kept winner (``hpsearch.engine.winner``): a study's end scores the best trial's kept model, equal to the winner
trained again, and trains it again only where no model is kept (another machine, a trainable without save_model,
files altered), saying why."""

from __future__ import annotations

import os
import shutil

import pytest

from hpsearch.engine.driver import Driver, StudyListener
from hpsearch.engine.training import load_data, score_test_split, train_once
from hpsearch.engine.winner import KeptWinner, Trial, rank_of
from hpsearch.spec.build import load_spec
from hpsearch.storage.connections import runs_folder
from tests.conftest import write_spec


def _retrained(monkeypatch) -> list:
    """The winners trained again from here on (the trials themselves train in stages, never through train_once)."""
    import hpsearch.engine.training as training

    calls: list = []

    def counting(spec, data, params=None, **kwargs):
        calls.append(params)
        return train_once(spec, data, params, **kwargs)

    monkeypatch.setattr(training, "train_once", counting)
    return calls


def _winner_folder(url: str) -> os.PathLike:
    return runs_folder(url) / "winner-tiny"


def test_the_study_s_end_scores_the_kept_winner_as_the_winner_trained_again_scores(tmp_path, monkeypatch):
    spec = load_spec(write_spec(tmp_path))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    retrained = _retrained(monkeypatch)
    lines: list[str] = []
    summary = Driver(spec, url, echo=lines.append).run()
    best = summary.best
    assert summary.complete and retrained == [] and best["trained_again"] is None
    # what training the winner again, as the end did before, gives: the same test score, metrics and curves
    data = load_data(spec)
    alone = train_once(spec, data, best["params"], seed=best["seed"])
    assert best["test_acc"] == score_test_split(spec, data, alone)["test_acc"]
    kept = Driver(spec, url).results.winner.take(Trial.of(_best_trial_id(spec, url), f"tiny.{best['phase']}",
                                                          best["params"], best["seed"]))
    assert kept.metrics == alone.metrics and kept.history == alone.history
    assert kept.loss_history == alone.loss_history
    files = sorted(path.name for path in _winner_folder(url).iterdir())
    assert files == [f"trial-{_best_trial_id(spec, url)}.npz", "winner.json"]  # one winner kept, the others gone
    assert not any("trained again" in line for line in lines)


def _best_trial_id(spec, url: str) -> int:
    driver = Driver(spec, url)
    return driver.results._best_row(driver.results.snapshot())[1].trial_id


class _AtPhaseEnd(StudyListener):
    """Does ``action`` to the kept winner's folder as the last phase ends, before the study's end scores it."""

    def __init__(self, action) -> None:
        self.action = action

    def on_phase_end(self, phase, status) -> None:
        if phase.name == "grid":
            self.action()


def _tamper(folder) -> None:
    model = next(path for path in folder.iterdir() if path.suffix == ".npz")
    altered = bytearray(model.read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    model.write_bytes(bytes(altered))


@pytest.mark.parametrize(("change", "why"), [
    (lambda folder: shutil.rmtree(folder), "its model is not kept here"),
    (_tamper, "the kept winner is refused: its model or record changed since they were saved"),
    (lambda folder: (folder / "winner.json").unlink() or os.mkfifo(folder / "winner.json"),
     "the kept winner is refused: a FIFO"),
])
def test_a_winner_without_its_kept_model_is_trained_again_to_the_same_score(tmp_path, monkeypatch, change, why):
    spec = load_spec(write_spec(tmp_path))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    retrained = _retrained(monkeypatch)
    lines: list[str] = []
    summary = Driver(spec, url, echo=lines.append, listener=_AtPhaseEnd(lambda: change(_winner_folder(url)))).run()
    best = summary.best
    assert summary.complete and retrained == [best["params"]]
    assert best["trained_again"].startswith(why), best["trained_again"]
    data = load_data(spec)
    alone = train_once(spec, data, best["params"], seed=best["seed"])
    assert best["test_acc"] == score_test_split(spec, data, alone)["test_acc"]


def test_the_summary_says_why_a_winner_was_trained_again(tmp_path):
    """`hpsearch status` prints the reason beside the winner (the CLI in this process)."""
    from typer.testing import CliRunner

    from hpsearch.cli.app import app

    spec = write_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    Driver(load_spec(spec), url, echo=lambda line: None,
           listener=_AtPhaseEnd(lambda: shutil.rmtree(_winner_folder(url)))).run()
    result = CliRunner().invoke(app, ["status", str(spec), "--storage", url])
    assert result.exit_code == 0, result.output
    assert "  trained again to be scored: its model is not kept here" in result.output


TRAINED: list = []


def plain(config, data, *, seed, on_epoch=None):
    """A user's trainable without save_model: only its metrics."""
    TRAINED.append(config["learning_rate"])
    return {"val_acc": config["learning_rate"]}


def test_a_trainable_that_cannot_save_its_models_has_its_winner_trained_again(tmp_path):
    spec = load_spec(write_spec(tmp_path, model={"backend": f"{__name__}:plain"},
                                objective={"metric": "val_acc", "direction": "maximize"}), allow_import=True)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    TRAINED.clear()
    driver = Driver(spec, url, echo=lambda line: None)
    summary = driver.run()
    assert summary.best["trained_again"] == ("the trainable cannot save its models (it has no save_model and "
                                             "load_model)")
    assert len(TRAINED) == len(driver.trials()) + 1 and TRAINED[-1] == summary.best["value"]  # once more at the end
    assert not _winner_folder(url).exists()


def test_a_better_trial_replaces_the_kept_winner_and_a_worse_or_equal_one_does_not(tmp_path, blobs):
    spec = load_spec(write_spec(tmp_path))
    results = {rate: train_once(spec, blobs, {"learning_rate": rate}, seed=1) for rate in (0.01, 0.1)}
    winner = KeptWinner(tmp_path / "winner", spec.trainable, lock=_no_lock)
    live = {"tiny.random"}

    def trial(trial_id: int, study: str = "tiny.random", rate: float = 0.01) -> Trial:
        return Trial.of(trial_id, study, {"learning_rate": rate}, 1)

    assert winner.offer(trial(1), rank_of(0.5, True, 0, 1), results[0.01], live)
    assert not winner.offer(trial(2), rank_of(0.5, True, 0, 2), results[0.1], live)  # a tie: the earlier stays
    assert not winner.offer(trial(3), rank_of(0.4, True, 0, 3), results[0.1], live)
    assert winner.take(trial(1)).metrics == results[0.01].metrics
    assert winner.take(trial(1, rate=0.02)).startswith("its model is not kept here")  # the same id, trained apart
    assert winner.offer(trial(4, "tiny.grid", 0.1), rank_of(0.6, True, 1, 0), results[0.1], live | {"tiny.grid"})
    assert winner.take(trial(1)).startswith("its model is not kept here")
    assert winner.take(trial(4, "tiny.grid", 0.1)).metrics == results[0.1].metrics
    # a kept winner of a study started afresh since (another generation) gives way to any trial of the live one
    assert winner.offer(trial(5, "tiny.random.v2"), rank_of(0.1, True, 0, 0), results[0.01], {"tiny.random.v2"})
    assert sorted(path.name for path in (tmp_path / "winner").iterdir()) == ["trial-5.npz", "winner.json"]
    winner.withdraw(trial(4, "tiny.grid", 0.1))  # not the kept one: nothing changes
    assert winner.take(trial(5, "tiny.random.v2")).metrics == results[0.01].metrics
    winner.withdraw(trial(5, "tiny.random.v2"))  # its end was not stored: it is forgotten, its model gone
    assert not list((tmp_path / "winner").iterdir())
    assert winner.offer(trial(6), rank_of(0.0, True, 0, 6), results[0.1], live)  # any trial is kept next


def _no_lock():
    import contextlib

    return contextlib.nullcontext()
