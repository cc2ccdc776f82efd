"""A study's layout (``hpsearch.engine.layout``) on a real SQLite storage, in-process: the context a study is created
with, a changed one refused or (--force-new-phase) started as a new generation, and a process that notices another's
generation under it. Two drivers stand for two processes."""

from __future__ import annotations

import pytest

from hpsearch.engine.driver import Driver
from hpsearch.engine.layout import describe_changes
from hpsearch.errors import SpecError
from hpsearch.spec.build import load_spec
from tests.conftest import TINY_STUDY, write_spec


@pytest.fixture
def process(tmp_path):
    made: list[Driver] = []

    def start(force_new_phase: bool = False, **defaults) -> Driver:
        spec = load_spec(write_spec(tmp_path, defaults={**TINY_STUDY["defaults"], **defaults}))
        made.append(Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", force_new_phase=force_new_phase,
                           echo=lambda line: None))
        return made[-1]

    yield start
    for driver in made:
        driver.close()


def test_a_study_s_first_run_stores_its_context_once_and_the_same_spec_works_in_it(process):
    first = process()
    created = first.phases.layout.check_context(first.data.fingerprint)
    assert created["generation"] == 1 and created["phases"] == {} and created["context"]["seed"] == 0
    again = process()
    assert again.phases.layout.check_context(again.data.fingerprint) == created
    assert again.phases.layout.generation == 1


def test_a_changed_context_is_refused_with_what_changed_and_nothing_written(process):
    first = process()
    first.phases.layout.check_context(first.data.fingerprint)
    changed = process(reg=0.5)
    with pytest.raises(SpecError, match=r"the spec changed since study 'tiny' started: defaults\.reg: .* -> 0\.5\. "
                                        r"Restore it, or rerun with --force-new-phase"):
        changed.phases.layout.check_context(changed.data.fingerprint)
    assert changed.phases.layout.read()["generation"] == 1  # untouched


def test_force_new_phase_starts_a_new_generation_and_a_process_of_the_old_one_stops_at_its_next_write(process):
    old = process()
    old.phases.layout.check_context(old.data.fingerprint)
    old.phases.open(old.spec.phases[0])
    old.phases.layout.follow()  # its own generation: one small read, nothing said
    new = process(force_new_phase=True, reg=0.5)
    layout = new.phases.layout.check_context(new.data.fingerprint)
    assert layout["generation"] == 2 and layout["phases"] == {} and layout["retired"] == ["tiny.random"]
    with pytest.raises(SpecError, match=r"study 'tiny' changed under this run: another process started it afresh "
                                        r"\(--force-new-phase\), defaults\.reg: .* -> 0\.5; phase 'random' was started "
                                        r"afresh\. This run stops here"):
        old.phases.layout.follow()


def test_a_process_of_the_same_spec_follows_a_restart_that_kept_its_phases(process):
    first = process()
    first.phases.layout.check_context(first.data.fingerprint)
    second = process(force_new_phase=True)
    second.phases.layout.retire_changed()  # nothing changed: the same generation
    first.phases.layout.follow()
    assert first.phases.layout.generation == second.phases.layout.generation == 1


@pytest.mark.parametrize("stored, current, said", [
    ({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}, ["b.c: 2 -> 3"]),
    ({"a": 1}, {"a": 1, "b": [1, 2]}, ["b: added [1, 2]"]),
    ({"a": 1, "b": "x"}, {"a": 1}, ['b: removed (was "x")']),
    ({"a": 1, "b": None}, {"a": 1}, []),  # an option left unset is the one an older version did not know
])
def test_changes_are_described_by_their_path(stored, current, said):
    assert describe_changes(stored, current) == said
