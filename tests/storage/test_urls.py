"""Storage URLs: passwords masked whole wherever they are shown, foreign databases refused, read-only commands."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpsearch.cli.app import app
from hpsearch.storage import urls as storage
from hpsearch.storage.urls import StorageError, mask_url, refuse_foreign_database, register_secret_url, resolve_storage_url

runner = CliRunner()


def spec_file(folder: Path) -> Path:
    spec = {
        "name": "st", "seed": 0,
        "data": {"dataset": "synthetic", "num_train": 100, "num_val": 30, "num_test": 30},
        "defaults": {"hidden_size": 8, "learning_rate": 0.05, "num_iters": 10, "batch_size": 50, "std": 0.01},
        "tracking": {"enabled": False},
        "phases": [{"name": "grid", "sampler": "grid", "grid": {"learning_rate": [0.01, 0.02]}}],
    }
    path = folder / "st.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- masking ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, secret", [
    ("postgresql://postgres:TOP SECRET@host/db", "TOP SECRET"),
    ("postgresql://postgres@host/db?password=TOP SECRET", "TOP SECRET"),
    ("postgresql://u:TOP@SECRET@host/db", "TOP@SECRET"),
    ("postgresql://u@host/db?password=TOP@SECRET", "TOP@SECRET"),
    ("postgresql://my user:TOPSECRET@host/db", "TOPSECRET"),
    ("postgresql://u:TOP%20SECRET@host/db", "TOP SECRET"),
])
def test_mask_url_hides_the_whole_password(url, secret):
    masked = mask_url(url)
    assert secret not in masked and secret.split()[-1] not in masked and secret.split("@")[-1] not in masked
    assert "***" in masked and masked.startswith("postgresql://")


def test_a_registered_password_is_masked_in_free_text():
    register_secret_url("postgresql://u:TOP@SECRET@host/db")
    # what a driver says about the host it could not resolve: the password's tail, without any URL around it
    assert mask_url('could not translate host name "SECRET@host"') == 'could not translate host name "***@host"'


def test_a_mask_that_joins_a_new_occurrence_is_masked_again():
    storage._known_secrets.clear()
    register_secret_url("postgresql://u:e@h/db")
    register_secret_url("postgresql://u:*x@h/db")
    assert "*x" not in mask_url("connection to db.example refused")  # 'e' -> '***' leaves '***xample'
    storage._known_secrets.clear()


def test_a_host_with_an_at_sign_is_refused_before_connecting():
    with pytest.raises(StorageError, match="%40") as caught:
        resolve_storage_url("postgresql://u:TOP@SECRET@host/db", None, "x")
    assert "SECRET" not in str(caught.value)


printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("éß€ "),
                    min_size=1, max_size=20)
# a run: letters and digits, single '.', '-' or '_' joining them (a host, a database name, a word)
RUN = re.compile(r"[^\W_]+(?:[._-][^\W_]+)*")


def stands_whole(secret: str, text: str) -> bool:
    """Whether ``secret`` occurs in ``text`` with neither end inside a run: an occurrence that masking must hide.
    Inside a run (the '1' of '127.0.0.1') it shows no password, and masking it there would give one away."""
    inside = {k for run in RUN.finditer(text) for k in range(run.start() + 1, run.end())}
    start = text.find(secret)
    while start != -1:
        if start not in inside and start + len(secret) not in inside:
            return True
        start = text.find(secret, start + 1)
    return False


@settings(max_examples=300, deadline=None)
@given(password=printable, user=st.sampled_from(["postgres", "my user", "u"]))
@example(password="ß/'!Bn@:nw<_G", user="postgres")  # a quote, and an '@' whose tail SQLAlchemy cannot read
def test_no_password_survives_masking(password, user):
    assume(password.strip("*"))  # a password of asterisks only is the mask itself
    netloc = f"postgresql://{user}:{password}@db.example:5432/studies"
    for url in (netloc, f"postgresql://{user}@db.example/studies?password={password.replace('&', '%26')}"):
        register_secret_url(url)
        for text in (url, f"storage {url!r} cannot be opened: connection to {url} refused", f"{url}\n{url}"):
            assert not stands_whole(password, mask_url(text)), text


short = st.text(st.sampled_from("0123456789abcdeglopqrstu"), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(password=short | printable.filter(lambda p: not set(p) & set("'\"\\")))
@example(password="1")
@example(password="q")
def test_masking_hides_the_password_field_and_leaves_host_port_and_database_readable(password):
    """The URL's password by its place, whatever its length; elsewhere only where it stands whole."""
    assume(password.strip("*"))
    storage._known_secrets.clear()  # a process that resolved this URL only

    def driver_says(url: str, quoted: str) -> str:  # what psycopg and the storage's error line say
        return (f"storage {url!r} cannot be opened: connection to server at \"127.0.0.1\", port 5432 failed: FATAL: "
                f"password \"{quoted}\" rejected for user \"postgres\" of database \"probe1\"")

    def in_netloc(secret: str) -> str:
        return f"postgresql://postgres:{secret}@127.0.0.1:5432/probe1"

    def in_query(secret: str) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/probe1?password={secret.replace('&', '%26')}"

    for form in (in_netloc, in_query):
        url = form(password)
        register_secret_url(url)
        expected = {form(password): form("***"), driver_says(url, password): driver_says(form("***"), "***")}
        # a password that stands whole in the rest of the text (the port '5432', the user 'postgres') is masked there
        assume(not any(stands_whole(secret, text) for secret in storage._url_secrets(url) for text in expected.values()))
        for text, masked in expected.items():
            assert mask_url(text) == masked


@pytest.mark.parametrize("url", [
    "postgresql://postgres@127.0.0.1:5432/test?password=TOP@SECRET",  # SQLAlchemy: host 'SECRET'
    "postgresql://127.0.0.1:5432/test?password=TOP@SECRET",
    "postgresql://postgres:TOP@SECRET@127.0.0.1:5432/test",
    "postgresql://postgres:TOP/SECRET@127.0.0.1:5432/test@x",
    "postgresql://postgres@127.0.0.1/TOP@SECRET",
])
def test_an_at_sign_after_the_host_is_refused_without_showing_the_url(url):
    with pytest.raises(StorageError) as caught:
        resolve_storage_url(url, None, "x")
    assert str(caught.value) == (
        "the storage URL has an '@' besides the one before its host; write '@' in a user name, password, database "
        "name or query percent-encoded, as %40 (and '/', '?' and '#' in a password as %2F, %3F and %23).")


def test_a_sqlite_path_may_hold_an_at_sign(tmp_path):
    url = f"sqlite:///{tmp_path / 'a@b.db'}"
    assert resolve_storage_url(url, None, "x") == url


@pytest.mark.parametrize("url, message", [
    ("postgresql://postgres@127.0.0.1:abc/test",
     "storage 'postgresql://postgres@127.0.0.1:abc/test': the port must be a number. Got 'abc' instead."),
    ("postgresql://postgres:pw@h1:5432,h2:5432/test",
     "storage 'postgresql://postgres:***@h1:5432,h2:5432/test': a URL names one host and port; give several "
     "PostgreSQL hosts in its query instead, as ?host=HOST1:5432&host=HOST2:5432."),
])
def test_a_port_that_is_no_number_is_one_line(url, message):
    with pytest.raises(StorageError) as caught:
        resolve_storage_url(url, None, "x")
    assert str(caught.value) == message


@pytest.mark.postgres
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# '?', '/' and '#' end the user-info part of any URL, so a password holding them must be percent-encoded: written
# raw, the host and port become part of the query and the unreachable host is no longer the one connected to
@given(password=printable.filter(lambda p: not set(p) & set("?/#")))
def test_no_password_in_status_or_in_the_error_for_an_unreachable_host(tmp_path, pg_database, password):
    assume(password.strip("*"))
    storage._known_secrets.clear()  # each example is a process of its own: only its password is known
    spec = spec_file(tmp_path)
    head, database = pg_database.rsplit("/", 1)
    url = head.replace("postgres@", f"postgres:{password}@") + f"/{database}"  # trust auth: any password connects
    shown = runner.invoke(app, ["status", str(spec), "--json", "--storage", url])
    if set(password) & set("@{}"):
        assert shown.exit_code == 2 and "percent-encoded" in shown.stderr  # '%40' itself is masked when '@' is it
        assert not stands_whole(password, shown.stderr)
    else:
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["storage"] == f"{head}/{database}".replace("postgres@", "postgres:***@")
    unreachable = runner.invoke(app, ["status", str(spec), "--storage", url.replace("127.0.0.1:5432", "127.0.0.1:1")])
    assert unreachable.exit_code == 2
    assert len(unreachable.stderr.strip().splitlines()) == 1 and not stands_whole(password, unreachable.stderr)


# ---- a database of another application -----------------------------------------------------------------------------

def mlflow_like_database(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, experiment_id INTEGER)")
        conn.execute("INSERT INTO experiments VALUES (0, 'Default')")
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", [["run"], ["status"], ["run", "--workers", "2"], ["export", "--output", "t.json"]])
def test_a_database_of_another_application_is_refused_untouched(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path)
    database = tmp_path / "mlflow.db"
    before = mlflow_like_database(database)
    result = runner.invoke(app, [command[0], str(spec), *command[1:], "--storage", f"sqlite:///{database}"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds 2 tables of another application (experiments, runs)" in lines[0]
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "st.yaml"]


def test_an_optuna_database_and_a_new_one_are_accepted(tmp_path):
    url = f"sqlite:///{tmp_path / 'st.db'}"
    refuse_foreign_database(url)  # no file yet
    assert runner.invoke(app, ["run", str(spec_file(tmp_path)), "--storage", url]).exit_code == 0
    refuse_foreign_database(url)


def test_optuna_s_tables_half_made_by_another_process_starting_on_the_database_are_accepted(tmp_path):
    """Two workers starting on a new database: one finds the tables the other is making, only some of them yet."""
    import sqlalchemy
    from optuna.storages._rdb import models

    url = f"sqlite:///{tmp_path / 'st.db'}"
    engine = sqlalchemy.create_engine(url)
    models.BaseModel.metadata.tables["studies"].create(engine)  # Optuna makes this one first
    engine.dispose()
    refuse_foreign_database(url)
    assert runner.invoke(app, ["run", str(spec_file(tmp_path)), "--storage", url]).exit_code == 0


def test_a_database_of_only_a_schema_version_stamp_is_not_taken_for_optuna_s(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as connection:  # what many applications' migrations make first
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    with pytest.raises(StorageError, match=r"holds 1 tables of another application \(alembic_version\)"):
        refuse_foreign_database(f"sqlite:///{tmp_path / 'other.db'}")


def test_a_file_that_is_no_database_is_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StorageError, match="is not a SQLite database"):
        refuse_foreign_database(f"sqlite:///{junk}")


# ---- read-only commands ----------------------------------------------------------------------------------------------

def test_read_only_commands_work_on_a_read_only_storage_folder(tmp_path, monkeypatch, read_only_folder):
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path)
    (tmp_path / "store").mkdir()
    url = "sqlite:///store/st.db"
    assert runner.invoke(app, ["run", str(spec), "--storage", url]).exit_code == 0
    read_only_folder(tmp_path / "store")
    for args in (["status", "--json"], ["best", "--format", "json"], ["export", "--output", "t.json"],
                 ["report", "--out", "rep"]):
        result = runner.invoke(app, [args[0], str(spec), *args[1:], "--storage", url])
        assert result.exit_code == 0, (args, result.output)
    assert len(json.loads((tmp_path / "t.json").read_text())) == 2
    refused = runner.invoke(app, ["run", str(spec), "--storage", url])
    assert refused.exit_code == 2 and "store is not writable" in refused.stderr


@pytest.mark.parametrize("command", [["status"], ["best"], ["export", "--output", "t.json"], ["report", "--out", "r"]])
def test_a_read_only_command_on_a_missing_database_creates_nothing(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path)
    result = runner.invoke(app, [command[0], str(spec), *command[1:], "--storage", "sqlite:///runs/st.db"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: no study stored at 'sqlite:///runs/st.db'; run the study first " \
                                    "(hpsearch run SPEC)."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.yaml"]


# ---- where a SQLite URL's path leads ---------------------------------------------------------------------------------

def test_a_storage_in_a_folder_that_does_not_exist_is_refused_but_runs_is_made(tmp_path, monkeypatch):
    """A mistyped folder would start a study nobody finds: one line, exit 2, nothing made; runs/ is the default."""
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path)
    result = runner.invoke(app, ["run", str(spec), "--storage", "sqlite:///nonexistent/dir/x.db"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: storage 'sqlite:///nonexistent/dir/x.db': the folder nonexistent/dir does not exist; "
        "create it first (only a runs/ folder is made for you).")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.yaml"]
    assert runner.invoke(app, ["run", str(spec), "--max-trials", "1"]).exit_code == 0
    assert (tmp_path / "runs").is_dir()


def test_a_storage_in_the_home_folder_is_found_there_as_data_paths_are(tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "studies").mkdir(parents=True), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    spec = spec_file(work)
    result = runner.invoke(app, ["run", str(spec), "--storage", "sqlite:///~/studies/st.db"])
    assert result.exit_code == 0, result.output
    assert f"optuna-dashboard sqlite:///{home}/studies/st.db" in result.stdout.splitlines()[-1]
    assert (home / "studies" / "st.db").is_file() and sorted(p.name for p in work.iterdir()) == ["st.yaml"]


def test_the_home_folder_of_an_unknown_user_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as caught:
        resolve_storage_url("sqlite:///~no_such_user_hpsearch/st.db", None, "st")
    assert str(caught.value) == ("storage 'sqlite:///~no_such_user_hpsearch/st.db' names a user's home folder that "
                                 "does not exist.")
    assert list(tmp_path.iterdir()) == []


# one file, however its path is written: each step keeps the folder the same, as the working directory reads it
FOLDER_SPELLINGS = st.lists(st.sampled_from(["dot", "up_and_back", "absolute", "symlink", "home"]), max_size=4)


def _spell(steps: list[str], tmp_path: Path) -> str:
    folder = "runs"
    for step in steps:
        if step == "dot":
            folder = f"{folder}/."
        elif step == "up_and_back":
            folder = f"{folder}/../runs"
        elif step == "absolute" and not folder.startswith(("/", "~")):
            folder = f"{tmp_path}/{folder}"
        elif step == "symlink" and folder.startswith("runs"):
            folder = "alias" + folder[len("runs"):]  # alias -> runs
        elif step == "home" and folder.startswith("runs"):
            folder = f"~/{folder}"  # $HOME is the working directory here
    return folder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=FOLDER_SPELLINGS, second=FOLDER_SPELLINGS, other_name=st.booleans(), hard_link=st.booleans())
def test_every_spelling_of_one_sqlite_file_names_one_database(tmp_path, monkeypatch, first, second, other_name,
                                                              hard_link):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs").mkdir(exist_ok=True)
    if not (tmp_path / "alias").exists():
        (tmp_path / "alias").symlink_to(tmp_path / "runs")
        (tmp_path / "runs" / "st.db").write_bytes(b"")
        (tmp_path / "runs" / "hard.db").hardlink_to(tmp_path / "runs" / "st.db")
    name = "other.db" if other_name else "hard.db" if hard_link else "st.db"
    a = resolve_storage_url(f"sqlite:///{_spell(first, tmp_path)}/st.db", None, "st")
    b = resolve_storage_url(f"sqlite:///{_spell(second, tmp_path)}/{name}", None, "st")
    assert storage.same_database(a, b) is not other_name
    assert storage.same_database(a, "postgresql://u@localhost/st") is False


@pytest.mark.parametrize("url, other, same", [
    ("postgresql://u:p@Localhost:5432/st", "postgresql+psycopg2://v@localhost/st", True),
    ("postgresql://u@localhost/st", "postgresql://u@localhost/other", False),
    ("postgresql://u@localhost:5433/st", "postgresql://u@localhost/st", False),
    ("sqlite:///st.db", "http://localhost:5000", False),
    ("sqlite:///st.db", "databricks", False),
])
def test_server_databases_are_one_when_host_port_and_name_are(url, other, same):
    assert storage.same_database(url, other) is same and storage.same_database(other, url) is same
