"""MLflow's UI in a real headless browser: the summary's link opens the study's runs table, not the GenAI overview,
and a study of more runs than the table's first page (100) still shows its study run there, its phase nested under it.

Needs a subprocess for `mlflow ui` (the server users start) and Chromium, headless, to run the UI's JavaScript;
skipped where Chromium is not installed (`apt-get install chromium` on Debian). `python tests/test_mlflow_ui.py OUT`
runs the same check by hand and leaves a screenshot of the runs table at OUT (the README's docs/mlflow-runs.png).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SERVER_START_SECONDS = 120  # the most `mlflow ui` may take to answer (it answers in a few seconds on 2 cores)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(store: str, port: int) -> subprocess.Popen:
    """`mlflow ui` on ``store``, once it answers its health check (polled: the server says when it is up)."""
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"mlflow ui did not start: {server.stderr.read()[-2000:]}")
        time.sleep(0.2)


def rendered(url: str, screenshot: Path | None = None) -> str:
    """The page's DOM once its scripts have run (Chromium's own clock: it waits for the page, not this test)."""
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=30000", "--window-size=1600,1000"]
    if screenshot is not None:
        subprocess.run([*args, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=180)
    return subprocess.run([*args, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=180).stdout


def tracked_study(folder: Path) -> tuple[str, str]:
    """A one-phase study of 101 trials run with tracking on, 103 runs in all: (MLflow store, the summary's link).

    Newest first, the table's first page would hold 100 trial runs, and the UI, which fetches one level of missing
    parents, the phase run cut off from its study's."""
    from typer.testing import CliRunner

    from hpsearch.cli.app import app
    from tests.conftest import TINY_STUDY, write_spec

    spec = write_spec(folder, "browsed", tracking={"enabled": True},
                      phases=[{**TINY_STUDY["phases"][0], "n_trials": 101}])
    result = CliRunner().invoke(app, ["run", str(spec), "--storage", f"sqlite:///{folder / 'runs' / 'b.db'}"])
    assert result.exit_code == 0, result.output
    link = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("  then http://"))
    return f"sqlite:///{folder / 'runs' / 'mlflow.db'}", link


def check(folder: Path, screenshot: Path | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs").mkdir(exist_ok=True)
    store, link = tracked_study(folder)
    port = free_port()
    server = serve(store, port)
    try:
        link = link.replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        page = rendered(link, screenshot)
        # the runs table, not MLflow 3's GenAI overview: the study's run on top, its phase and trials nested
        # beneath (collapsed), not a phase run cut off from its study
        assert ">browsed<" in page, "the runs table does not list the study's run"
        assert ">browsed/random<" not in page, "the phase run is shown cut off from its study"
        assert "matching runs" in page
        # in the UI's model-training mode, whose sidebar goes on to Runs and Models, not to traces and prompts
        assert "Model registry" in page and "Prompts" not in page and "Evaluation runs" not in page
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_summary_s_link_opens_the_experiment_s_runs_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check(tmp_path)


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's root, for tests.conftest
    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None

    with tempfile.TemporaryDirectory() as scratch:
        check(Path(scratch), out)
    print(f"MLflow's UI lists the study's runs{f'; screenshot at {out}' if out else ''}")
