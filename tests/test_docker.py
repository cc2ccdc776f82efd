"""What can be checked of docker/ without a Docker engine: the files parse and their commands are valid."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from hpsearch.cli.app import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((REPO / "docker" / name).read_text())


def expand(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults, ${VAR:?message} (a required variable) with a value."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "set-by-the-user", value)


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


def test_image_installs_with_the_guide_s_command():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    install = next(line[len("RUN "):] for line in dockerfile.splitlines() if line.startswith("RUN pip install"))
    assert "torch" in install and "cpu" in install  # CPU torch: no CUDA download in the image
    assert install in (REPO / "docs" / "workers.md").read_text()
    assert 'ENTRYPOINT ["hpsearch"]' in dockerfile
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / source).exists(), source


def test_postgres_creates_the_mlflow_database():
    sql = (REPO / "docker" / "initdb" / "10-mlflow.sql").read_text()
    assert "CREATE DATABASE mlflow" in sql
    assert "/mlflow" in " ".join(compose()["services"]["mlflow"]["command"])


def test_the_guide_s_commands_for_docker_match_the_files():
    guide = (REPO / "docs" / "workers.md").read_text()
    for line in guide.splitlines():
        if line.strip().startswith("docker compose"):
            words = shlex.split(line.split("#")[0])
            if "-f" in words:
                assert (REPO / words[words.index("-f") + 1]).exists(), line


def test_the_deployment_does_not_start_open():
    text = (REPO / "docker" / "compose.yaml").read_text()
    # the password is required: every use of it fails when it is unset, none falls back to a default
    uses = re.findall(r"\$\{POSTGRES_PASSWORD(:[-?][^}]*)?\}", text)
    assert uses and all(use.startswith(":?") for use in uses), uses
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${HPSEARCH_BIND:-127.0.0.1}:"), (name, port)
            assert expand(port).startswith("127.0.0.1:"), (name, port)
    mlflow = compose()["services"]["mlflow"]["command"]
    allowed = expand(mlflow[mlflow.index("--allowed-hosts") + 1]).split(",")
    assert "*" not in allowed and "mlflow:5000" in allowed  # the workers' Host header, and no wildcard


def test_the_auth_override_puts_mlflow_behind_basic_auth():
    from importlib.metadata import entry_points

    from click.testing import CliRunner as ClickRunner
    from mlflow.cli import cli

    override = compose("compose.auth.yaml")
    mlflow = override["services"]["mlflow"]
    command = [expand(part) for part in mlflow["command"]]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert "basic-auth" in {entry.name for entry in entry_points(group="mlflow.app")}
    assert ClickRunner().invoke(cli, [*command, "--help"]).exit_code == 0
    # the rest of the server's command is the base file's: the override only adds the app
    base = [expand(part) for part in compose()["services"]["mlflow"]["command"]]
    assert [part for part in command if part not in ("--app-name", "basic-auth")] == base
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_AUTH_ADMIN_PASSWORD:?")
    ini_mount = next(v for v in mlflow["volumes"] if v.endswith(":ro"))
    source, target = ini_mount.split(":")[:2]
    assert mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == target
    config = configparser.ConfigParser()
    config.read(REPO / "docker" / source)
    users = config["mlflow"]["database_uri"]
    # the users' database lies in a volume of its own, not among the artifacts the server hands out
    assert users.startswith("sqlite:////mlauth/") and "mlauth:/mlauth" in mlflow["volumes"]
    assert "mlauth" in override["volumes"] and "admin_password" not in config["mlflow"]
    worker = override["services"]["worker"]["environment"]
    assert worker["MLFLOW_TRACKING_USERNAME"] == config["mlflow"]["admin_username"]
    assert worker["MLFLOW_TRACKING_PASSWORD"] == mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert "docker/compose.auth.yaml" in (REPO / "docs" / "workers.md").read_text()
