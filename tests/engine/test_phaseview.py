"""A phase's ETA: the training left, at the pace its last trials ended, whatever the overlaps of ladders' rungs."""

from __future__ import annotations

import datetime

import pytest

from hpsearch.engine.phaseview import PhaseView
from hpsearch.search.ladders import ladders, not_promoted, work
from hpsearch.spec.models import PhaseSpec
from hpsearch.storage.trialstore import Row

T0 = datetime.datetime(2026, 1, 1)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def grid_view(points: list[dict], budget: str | None = None, **schedule) -> tuple[PhaseView, list[dict]]:
    phase = PhaseSpec(name="grid", sampler="grid", grid={k: sorted({p[k] for p in points}) for k in points[0]},
                      **({"budget": budget} if budget else {}),
                      **({"schedule": {"type": "halving", **schedule}} if schedule else {}))
    view = PhaseView(phase, None, {"study": "s.grid", "grid": phase.grid}, "maximize", len(points))
    found = ladders(points, budget) if budget else None
    view.set_work(work(found, [p.get(budget) for p in points] if budget else [None] * len(points),
                       reduction_factor=schedule.get("reduction_factor") if schedule else None,
                       levels=schedule.get("levels")))
    return view, points


def test_a_ladder_s_rungs_overlap_yet_the_eta_is_the_training_left_at_the_pace_so_far():
    # 2 ladders of rungs 10, 20, 40 iterations, a second per 10 iterations: each rung starts with the claim, so
    # the durations overlap (10, 20, 40 s), but the ends come one stretch apart
    points = [{"lr": lr, "n": n} for lr in (0.1, 0.2) for n in (10, 20, 40)]
    view, _ = grid_view(points, "n")
    ends = {0: 1, 1: 2, 2: 4}  # ladder 0's rungs end at 1, 2, 4 s
    for number, (point, end) in enumerate(ends.items()):
        view.apply(Row(number + 1, number, "COMPLETE", 0.5, T0, at(end), point))
    # 40 iterations done in 4 s (from the first end: 30 in 3 s); 40 left: 4 s, not 2 x the mean duration of 23 s
    assert view.eta_seconds() == pytest.approx(4.0)


def test_a_halving_phase_s_eta_counts_the_survivors_training_and_ignores_rungs_not_promoted():
    # 9 ladders of 2 rungs (5, 10): all train to 5, the best 3 go on to 10
    points = [{"lr": lr, "n": n} for lr in range(9) for n in (5, 10)]
    view, _ = grid_view(points, "n", reduction_factor=3)
    number = 0
    for ladder in range(9):  # the first level: a second per rung
        view.apply(Row(number + 1, number, "COMPLETE", 0.1 * ladder, T0, at(ladder + 1), 2 * ladder))
        number += 1
    for ladder in range(6):  # the level's cut: the others' top rungs end together, untrained
        view.apply(Row(number + 1, number, "PRUNED", None, at(9), at(9), 2 * ladder + 1, not_promoted(5)))
        number += 1
    # 45 units trained at 1 s per 5; left: 3 ladders x 5 units = 15 units, 3 s (the 6 rungs cut cost nothing)
    assert view.eta_seconds() == pytest.approx(3.0)
    for ladder in range(6, 9):  # retried rungs trained more than the levels foresaw: still an ETA while any is left
        view.apply(Row(number + 1, number, "FAIL", None, T0, at(10 + ladder), 2 * ladder + 1, "an error"))
        number += 1
    # a trial's worth (60 units over 12 trials) at the last trials' pace (from 9 s to 18 s for 15 units)
    assert view.eta_seconds() == pytest.approx(60 / 12 * 9 / 15)


def test_a_phase_without_a_budget_counts_its_points_at_their_recent_pace():
    points = [{"lr": lr} for lr in range(20)]
    view, _ = grid_view(points)
    for number in range(10):  # slow at first, then 0.5 s a trial (the pruner stops more of them)
        end = 2.0 * number if number < 5 else 8.0 + 0.5 * (number - 4)
        view.apply(Row(number + 1, number, "COMPLETE", 0.5, T0, at(end), number))
    assert view.eta_seconds() == pytest.approx(10 * 0.5)  # the last few trials' pace, not the whole phase's mean



def test_work_counts_a_rung_s_stretch_and_halving_s_survivors():
    """A rung trains what it adds to the rung below; halving trains its levels' survivors only."""
    points = [{"lr": lr, "n": n} for lr in range(3) for n in (10, 20, 40)]
    found = ladders(points, "n")
    stretched = work(found, [p["n"] for p in points])
    assert stretched.of_point[:3] == (10.0, 10.0, 20.0) and stretched.expected == 3 * 40 and stretched.trials == 9
    halved = work(found, [p["n"] for p in points], reduction_factor=3)
    assert halved.expected == 3 * 10 + 1 * 10 + 1 * 20 and halved.trials == 3 + 1 + 1  # ceil(3 / 3), ceil(1 / 3)


def test_a_change_a_slow_clock_hid_from_the_catch_up_is_found_where_a_decision_rests_on_the_view(tmp_path):
    """A worker whose clock runs 10 minutes behind finishes a trial: its start and end lie before the view's last
    look by more than the catch-up's slack, so a catch-up cannot see it; an exact refresh (a phase's end, the study's
    result) finds the counts differ and reads the phase again. In-process, on a real SQLite storage."""
    import optuna
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    from hpsearch.storage.trialstore import TrialStore

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'skew.db'}")
    optuna.create_study(study_name="s.grid", storage=storage, direction="maximize")
    store = TrialStore(storage)
    study_id = store.study_id("s.grid")
    one_of = optuna.distributions.CategoricalDistribution
    store.enqueue(study_id, [({"lr": (lr, one_of([lr]))}, {"point": k}) for k, lr in enumerate([0.1, 0.2])])
    phase = PhaseSpec(name="grid", sampler="grid", grid={"lr": [0.1, 0.2]})
    view = PhaseView(phase, store, {"study": "s.grid", "grid": phase.grid}, "maximize", 2)
    view.refresh()
    (trial_id, _, _), = store.claim(study_id, {"pid": 1})
    store.finish(trial_id, TrialState.COMPLETE, 0.5, {})
    behind = store.now() - datetime.timedelta(minutes=10)
    trials = models.TrialModel.__table__
    with store.engine.begin() as conn:
        conn.execute(sa.update(trials).where(trials.c.trial_id == trial_id)
                     .values(datetime_start=behind, datetime_complete=behind))
    view.refresh()
    assert view.status()["complete"] == 0  # what a catch-up by time alone sees
    view.refresh(exact=True)
    assert view.status()["complete"] == 1 and view.best().value == 0.5
