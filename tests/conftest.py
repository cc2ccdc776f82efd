"""Shared fixtures: tiny datasets made here, and CIFAR-10 built from ../shared/data when that archive exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpsearch.data import Dataset, load_dataset

REPO = Path(__file__).resolve().parents[1]
CIFAR_BUILDER = REPO.parent / "shared" / "data" / "make_cifar10.py"


@pytest.fixture
def blobs() -> Dataset:
    """Three separable classes in 20 dimensions: 500 train / 100 val / 100 test."""
    return load_dataset("synthetic", seed=0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in the official layout: $HPSEARCH_CIFAR10 if set, else built from ../shared/data, else skip."""
    given = os.environ.get("HPSEARCH_CIFAR10")
    if given:
        return Path(given)
    if not CIFAR_BUILDER.exists():
        pytest.skip(f"CIFAR-10 archive not found next to {CIFAR_BUILDER.parent}")
    out = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(CIFAR_BUILDER), str(out)], check=True, capture_output=True)
    return out / "cifar-10-batches-py"


PG_ADMIN = os.environ.get("HPSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database URL, dropped afterwards. Skips without a server, except under CI=true."""
    import uuid

    import sqlalchemy

    name = f"hpsearch_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_ADMIN} is required under CI=true: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def freeze_mid_trial():
    """The function :func:`_freeze_mid_trial`, for tests that stop a process inside a trial."""
    return _freeze_mid_trial


def _freeze_mid_trial(proc, running_trials) -> object:
    """Stop ``proc`` (SIGSTOP) while the storage shows it inside a trial, and return that trial.

    ``running_trials()`` lists the RUNNING trials of the study (any order). The process is frozen first and the
    storage read after, so the trial returned is the one the process is in; it resumes with SIGCONT. Waits on storage
    states only; fails if the process ends first.
    """
    import signal

    while True:
        if proc.poll() is not None:
            pytest.fail(f"the process ended first (exit {proc.returncode})")
        mine = [t for t in running_trials() if (t.user_attrs.get("hpsearch:owner") or {}).get("pid") == proc.pid]
        if not mine:
            continue
        proc.send_signal(signal.SIGSTOP)
        mine = [t for t in running_trials() if (t.user_attrs.get("hpsearch:owner") or {}).get("pid") == proc.pid]
        if mine:
            return mine[0]
        proc.send_signal(signal.SIGCONT)
