"""The Python API's door: every argument of run, status, trials and load is checked before anything is read or
written, and a mistake is a UserError of one line, the line the command line prints for the same mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpsearch import api
import hpsearch
from hpsearch.cli.app import app
from hpsearch.errors import UserError
from tests.conftest import write_spec

runner = CliRunner()


@pytest.fixture
def spec(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return write_spec(tmp_path, "door", tracking={"enabled": False})


@pytest.mark.parametrize("args, kwargs, message", [
    ((123,), {}, "spec must be a path to a YAML file, a mapping of its keys or a StudySpec. Got 123 instead."),
    ((None,), {}, "spec must be a path to a YAML file, a mapping of its keys or a StudySpec. Got None instead."),
    ((), {"max_trials": "3"}, "max_trials must be an integer >= 0. Got '3' instead."),
    ((), {"max_trials": -1}, "max_trials must be an integer >= 0. Got -1 instead."),
    ((), {"max_trials": 1.5}, "max_trials must be an integer >= 0. Got 1.5 instead."),
    ((), {"max_trials": True}, "max_trials must be an integer >= 0. Got True instead."),
    ((), {"timeout": float("nan")}, "timeout must be a number of seconds >= 0. Got nan instead."),
    ((), {"timeout": -1}, "timeout must be a number of seconds >= 0. Got -1 instead."),
    ((), {"time_box": [60]}, "time_box must be a duration such as 3300, '55m' or '1h'. Got [60] instead."),
    ((), {"storage": 123}, "storage must be a database URL or None. Got 123 instead."),
    ((), {"tracking_uri": 5}, "tracking_uri must be an MLflow tracking URI or None. Got 5 instead."),
    ((), {"overrides": [1]}, "overrides must be a list of 'KEY.PATH=VALUE' strings. Got [1] instead."),
    ((), {"overrides": "seed=1"}, "overrides must be a list of 'KEY.PATH=VALUE' strings, such as ['seed=1'], not "
                                  "one string. Got 'seed=1' instead."),
    ((), {"phase": 2}, "phase must be a phase's name or None. Got 2 instead."),
    ((), {"tracking": "no"}, "tracking must be True or False. Got 'no' instead."),
    ((), {"force_new_phase": 1}, "force_new_phase must be True or False. Got 1 instead."),
    ((), {"allow_import": "yes"}, "allow_import must be True, False or None. Got 'yes' instead."),
    ((), {"base_dir": 7}, "base_dir must be a path (a string or a Path) or None. Got 7 instead."),
    ((), {"echo": "stderr"}, "echo must be a function or None. Got 'stderr' instead."),
])
def test_run_refuses_a_bad_argument_in_one_line_before_anything_is_written(spec, tmp_path, args, kwargs, message):
    with pytest.raises(UserError) as caught:
        hpsearch.run(*(args or (spec,)), **kwargs)
    assert str(caught.value) == message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["door.yaml"]


@pytest.mark.parametrize("call", [api.status, api.trials])
@pytest.mark.parametrize("kwargs, message", [
    ({"storage": 123}, "storage must be a database URL or None. Got 123 instead."),
    ({"overrides": "seed=1"}, "overrides must be a list of 'KEY.PATH=VALUE' strings, such as ['seed=1'], not one "
                              "string. Got 'seed=1' instead."),
])
def test_status_and_trials_check_their_arguments_too(spec, call, kwargs, message):
    with pytest.raises(UserError) as caught:
        call(spec, **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize("option, keyword", [
    (["--timeout", "-1"], {"timeout": -1.0}),
    (["--timeout", "nan"], {"timeout": float("nan")}),
    (["--max-trials", "-1"], {"max_trials": -1}),
    (["--time-box", "soon"], {"time_box": "soon"}),
    (["--time-box", "0m"], {"time_box": "0m"}),
    (["--set", "oops"], {"overrides": ["oops"]}),
    (["--storage", "postgresql://u@127.0.0.1:abc/db"], {"storage": "postgresql://u@127.0.0.1:abc/db"}),
])
def test_the_api_says_what_the_command_line_says_for_the_same_mistake(spec, option, keyword):
    """The same check serves both: only the argument's name is spelt as each caller spells it."""
    printed = runner.invoke(app, ["run", str(spec), *option])
    assert printed.exit_code == 2
    with pytest.raises(UserError) as caught:
        hpsearch.run(spec, **keyword)
    said, name = str(caught.value), next(iter(keyword))
    if said.startswith(f"{name} must "):  # the line names the argument: --max-trials there, max_trials here
        said = option[0] + said[len(name):]
    assert printed.stderr == f"error: {said}\n"


def _open_on(path: Path) -> list[str]:
    """This process's file descriptors open on the SQLite database at ``path`` or its companions."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = Path(fd.readlink())
        except OSError:  # closed between the listing and the look
            continue
        if target.name.startswith(path.name) and target.parent == path.parent.resolve():
            found.append(str(target))
    return found


def test_a_library_user_s_process_keeps_no_thread_or_connection_after_a_study(spec, tmp_path):
    """Two runs and a status in one process (a notebook's way): each leaves no heartbeat thread and no connection to
    the study's database open behind it."""
    import threading

    database = tmp_path / "runs" / "door.db"
    earlier = set(threading.enumerate())  # other tests' drivers in this process, which they did not close
    for _ in range(2):  # the second resumes the first's study, complete: a fresh driver on the same storage
        result = hpsearch.run(spec, tracking=False)
        assert result.complete and result.best_value is not None
        assert [t.name for t in set(threading.enumerate()) - earlier] == []
        assert _open_on(database) == []
    assert api.status(spec).complete
    assert _open_on(database) == [] and database.exists()
