"""The checks of a run's arguments, shared by the command line and the Python API: every value is accepted as what
it means or refused with one UserError line in the template, never a TypeError or an AttributeError."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpsearch import arguments
from hpsearch.errors import UserError

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.binary(max_size=4),
    st.lists(st.integers() | st.text(max_size=4), max_size=3), st.tuples(st.text(max_size=4)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.builds(Path, st.text(max_size=6)),
    st.builds(object),
)


def outcome(check, value, name):
    """What ``check`` makes of ``value``: ("ok", the value it returns) or ("refused", its one line)."""
    try:
        return "ok", check(value, name)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{name} must be ") and str(exc).endswith(" instead.")
        return "refused", str(exc)


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@settings(max_examples=300, deadline=None)
@given(value=anything)
def test_a_timeout_is_a_finite_number_of_seconds_at_least_0(value):
    accepted = value is None or (number(value) and math.isfinite(value) and value >= 0)
    kind, result = outcome(arguments.time_limit, value, "timeout")
    assert kind == ("ok" if accepted else "refused"), result
    if accepted and value is not None:
        assert result == float(value) and type(result) is float


@settings(max_examples=300, deadline=None)
@given(value=anything)
def test_a_trial_count_is_a_whole_number_at_least_0(value):
    accepted = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    kind, result = outcome(arguments.trial_count, value, "max_trials")
    assert kind == ("ok" if accepted else "refused"), result
    if accepted:
        assert result == value


@settings(max_examples=300, deadline=None)
@given(value=anything | st.lists(st.text(max_size=8), max_size=3))
def test_overrides_are_a_list_of_strings_never_one_string_read_letter_by_letter(value):
    accepted = value is None or (isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value))
    kind, result = outcome(arguments.overrides, value, "overrides")
    assert kind == ("ok" if accepted else "refused"), result
    if accepted:
        assert result == list(value or [])


@settings(max_examples=200, deadline=None)
@given(value=anything)
def test_a_time_box_is_a_duration_or_refused_in_one_line(value):
    kind, result = outcome(arguments.duration, value, "time_box")
    if number(value):  # a number of seconds: taken when finite and > 0
        assert kind == ("ok" if math.isfinite(value) and value > 0 else "refused"), result
    if kind == "ok" and value is not None:
        assert 0 < result < math.inf and (number(value) or isinstance(value, str))


@pytest.mark.parametrize("value, seconds", [(None, None), (90, 90.0), (0.5, 0.5), ("90s", 90.0), ("55m", 3300.0),
                                            ("5 m", 300.0), ("1.5h", 5400.0), ("2min", 120.0)])
def test_a_time_box_takes_seconds_and_durations_with_units(value, seconds):
    assert arguments.duration(value, "time_box") == seconds


@pytest.mark.parametrize("value", ["soon", "0s", "-5m", "5 days", "", True, float("inf"), [55]])
def test_a_time_box_refuses_what_is_no_positive_duration(value):
    assert outcome(arguments.duration, value, "time_box")[0] == "refused"


@pytest.mark.parametrize("check, value, message", [
    (arguments.overrides, "seed=1", "overrides must be a list of 'KEY.PATH=VALUE' strings, such as ['seed=1'], not "
                                    "one string. Got 'seed=1' instead."),
    (arguments.time_limit, "x" * 500, "timeout must be a number of seconds >= 0. Got "
                                      f"'{'x' * 27}...{'x' * 28}' instead."),  # what is quoted back stays short
    (arguments.flag, "no", "tracking must be True or False. Got 'no' instead."),
])
def test_the_line_names_the_argument_and_quotes_what_was_given(check, value, message):
    name = message.split()[0]
    with pytest.raises(UserError) as caught:
        check(value, name)
    assert str(caught.value) == message
