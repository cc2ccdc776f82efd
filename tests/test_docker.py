"""What can be checked of docker/ without a Docker engine, Slurm or Kubernetes: the files parse and their commands are
valid."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
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
    assert "torch" in install and "--extra-index-url ${TORCH_INDEX}" in install
    # CPU torch unless asked: no CUDA download in the image
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile.splitlines()
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


# ---- Slurm and Kubernetes --------------------------------------------------------------------------------------------

def test_the_slurm_array_task_runs_one_worker_on_its_cores(tmp_path):
    """The script run as Slurm would run one array task (a subprocess: it is a shell script), with an `hpsearch` on
    PATH that records how it was started."""
    script = REPO / "docker" / "slurm-workers.sbatch"
    directives = re.findall(r"^#SBATCH (\S+)", script.read_text(), re.M)
    assert "--gres=gpu:1" in directives and "--cpus-per-task=4" in directives
    fake = tmp_path / "bin" / "hpsearch"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$OMP_NUM_THREADS $OPENBLAS_NUM_THREADS $MKL_NUM_THREADS $*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "SLURM_CPUS_PER_TASK": "4",
           "HPSEARCH_STORAGE": "postgresql://user@db-host:5432/studies"}
    done = subprocess.run(["bash", str(script), "studies/quickstart.yaml"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "4 4 4 worker studies/quickstart.yaml\n", done.stderr
    words = done.stdout.split()[3:]
    result = runner.invoke(app, [*words, "--help"])  # a valid hpsearch invocation
    assert result.exit_code == 0 and (REPO / words[1]).exists(), result.output
    del env["HPSEARCH_STORAGE"]  # no storage the workers share: refused before any starts
    done = subprocess.run(["bash", str(script), "studies/quickstart.yaml"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "HPSEARCH_STORAGE" in done.stderr and done.stdout == ""


def test_the_kubernetes_job_runs_workers_on_a_secret_storage():
    job = yaml.safe_load((REPO / "docker" / "kubernetes-workers.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # as backoffLimitPerIndex needs
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == compose()["x-hpsearch"]["image"]
    args = container["args"]
    assert args[0] == "worker" and (REPO / args[1]).exists()
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    env = {item["name"]: item for item in container["env"]}
    assert env["HPSEARCH_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "hpsearch-storage", "key": "url"}
    cpus = container["resources"]["limits"]["cpu"]
    assert env["OMP_NUM_THREADS"]["value"] == env["OPENBLAS_NUM_THREADS"]["value"] == cpus  # one thread per core


def test_the_gpu_override_reserves_the_gpus_and_hands_each_worker_its_own():
    """docker/compose.gpu.yaml: the worker reserves the host's GPUs (Compose's deploy.resources.reservations.devices)
    and runs one worker process per GPU: a valid `run --workers N --gpus LIST`, on the CUDA image."""
    worker = compose("compose.gpu.yaml")["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert "whl/cu" in worker["build"]["args"]["TORCH_INDEX"] and worker["image"] != compose()["x-hpsearch"]["image"]
    command = [expand(part) for part in worker["command"]]
    assert command[0] == "run" and (REPO / command[1]).exists()
    assert command[command.index("--workers") + 1] == "1" and command[command.index("--gpus") + 1] == "0"
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
