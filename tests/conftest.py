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
def read_only_folder(tmp_path):
    """Make a folder read-only for this process: chattr +i as root (root ignores mode bits), chmod otherwise."""
    import shutil

    folders = []

    def protect(folder: Path) -> None:
        if os.geteuid() == 0:
            if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
                pytest.skip("running as root without chattr +i: no way to make a folder read-only")
        else:
            folder.chmod(0o555)
        folders.append(folder)

    yield protect
    for folder in folders:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)
