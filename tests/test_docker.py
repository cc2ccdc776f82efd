"""What can be checked of docker/ without a Docker engine: the files parse and their commands are valid."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from hpsearch.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def compose() -> dict:
    return yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())


def expand(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_has_the_services():
    services = compose()["services"]
    assert {"postgres", "mlflow", "worker", "dashboard"} <= services.keys()
    assert services["dashboard"]["profiles"] == ["dashboard"]
    assert "pgdata" in compose()["volumes"] and "mlartifacts" in compose()["volumes"]


def test_worker_command_is_a_valid_hpsearch_invocation():
    worker = compose()["services"]["worker"]
    command = [expand(part) for part in worker["command"]]
    assert command[0] == "worker" and (REPO / command[1]).exists()
    # click parses every option before it honours a trailing --help: an unknown option would fail here
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert expand(worker["environment"]["HPSEARCH_STORAGE"]).startswith("postgresql://hpsearch:")


def test_mlflow_server_command_is_valid():
    from click.testing import CliRunner as ClickRunner
    from mlflow.cli import cli

    mlflow = compose()["services"]["mlflow"]
    assert mlflow["entrypoint"] == ["mlflow"]
    result = ClickRunner().invoke(cli, [*(expand(part) for part in mlflow["command"]), "--help"])
    assert result.exit_code == 0, result.output


def test_image_installs_with_the_readme_s_command():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    install = next(line[len("RUN "):] for line in dockerfile.splitlines() if line.startswith("RUN pip install"))
    assert "torch" in install and "cpu" in install  # CPU torch: no CUDA download in the image
    assert install in (REPO / "README.md").read_text()
    assert 'ENTRYPOINT ["hpsearch"]' in dockerfile
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / source).exists(), source


def test_postgres_creates_the_mlflow_database():
    sql = (REPO / "docker" / "initdb" / "10-mlflow.sql").read_text()
    assert "CREATE DATABASE mlflow" in sql
    assert "/mlflow" in " ".join(compose()["services"]["mlflow"]["command"])


def test_readme_commands_for_docker_match_the_files():
    readme = (REPO / "README.md").read_text()
    for line in readme.splitlines():
        if line.strip().startswith("docker compose"):
            words = shlex.split(line.split("#")[0])
            if "-f" in words:
                assert (REPO / words[words.index("-f") + 1]).exists(), line
