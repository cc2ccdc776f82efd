"""How close hpsearch's estimates come to the wall: `plan`'s total, and the ETA each trial's line gives its phase.

    python benchmarks/estimates.py [--studies quickstart halving cifar10-fast] [--data data/cifar-10-batches-py]
                                   [--workdir W] [--repeats N]

For each study: ``hpsearch plan --json`` (its probe runs first), then ``hpsearch run`` on a fresh SQLite storage in
--workdir with tracking off, its output read line by line as it comes. Reported per study: plan's estimate against the
run's wall time, and for each phase the ETAs its progress lines gave between 10 % and 90 % of the phase's wall,
against the time that was really left until the phase's last line: how far off the phase's end each put it, as a share
of the phase's wall (the median; goal within 25 %, as plan's of the run's), and as a share of the time that was left
(which grows without bound near the end). Studies: ``quickstart`` (studies/quickstart.yaml, a
random phase and the grid derived from it), ``halving`` (the digits, the quickstart's model: a 120-point grid of
budget ladders halved at three levels) and ``cifar10-fast`` (studies/cifar10-twolayer-fast.yaml, 384 points halved
on CIFAR-10; about 20 minutes on 2 cores; needs --data, built with ``python ../shared/data/make_cifar10.py data``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from _common import HPSEARCH, REPO, report

HALVING = {
    "name": "halving-digits", "seed": 0, "data": {"dataset": "digits"}, "model": {"backend": "numpy"},
    "defaults": {"hidden_size": 50, "learning_rate": 0.03, "learning_rate_decay": 0.95, "reg": 0.001,
                 "num_iters": 300, "batch_size": 100},
    "objective": {"metric": "val_acc", "direction": "maximize"},
    "phases": [{"name": "grid", "sampler": "grid", "budget": "num_iters",
                "schedule": {"type": "halving", "reduction_factor": 3, "levels": [100, 300, 900]},
                "grid": {"hidden_size": [20, 50, 100], "learning_rate": [0.003, 0.01, 0.03, 0.1, 0.3],
                         "reg": [0.0001, 0.01], "num_iters": [100, 300, 600, 900]}}],
}
UNITS = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
LINE = re.compile(r"^\[(?P<phase>[^\]]+)\] (?P<done>\d+)/(?P<total>\d+) trial .*?(?:, ETA (?P<eta>[^,]+))?$")


def seconds_of(text: str) -> float:
    """What :func:`hpsearch.formatting.format_duration` printed, in seconds: ``3 min 20 s`` is 200."""
    parts = text.split()
    return sum(float(value) * UNITS[unit] for value, unit in zip(parts[::2], parts[1::2]))


def spec_of(study: str, workdir: Path, data: str | None) -> tuple[Path, list[str]]:
    """The study's spec file and the --set arguments it runs with."""
    if study == "quickstart":
        return REPO / "studies" / "quickstart.yaml", []
    if study == "halving":
        path = workdir / "halving-digits.yaml"
        path.write_text(yaml.safe_dump(HALVING, sort_keys=False))
        return path, []
    if study == "cifar10-fast":
        if not data or not Path(data).is_dir():
            raise SystemExit(f"{data}: CIFAR-10 folder not found; build it with python "
                             f"{REPO.parent / 'shared' / 'data' / 'make_cifar10.py'} {REPO / 'data'}")
        return REPO / "studies" / "cifar10-twolayer-fast.yaml", ["--set", f"data.path={Path(data).resolve()}"]
    raise SystemExit(f"unknown study {study!r}")


def measure(study: str, workdir: Path, data: str | None, repeat: int) -> dict:
    spec, sets = spec_of(study, workdir, data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    planned = subprocess.run([*HPSEARCH, "plan", str(spec), *sets, "--json"], cwd=workdir, env=env,
                             capture_output=True, text=True)
    if planned.returncode != 0:
        raise SystemExit(f"plan {study} failed:\n{planned.stderr[-2000:]}")
    estimate = json.loads(planned.stdout)["estimated_seconds"]
    storage = f"sqlite:///{workdir / f'{study}-{repeat}.db'}"
    command = [*HPSEARCH, "run", str(spec), *sets, "--set", "tracking.enabled=false", "--storage", storage]
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"run {study} failed:\n" + "\n".join(text for _, text in lines[-20:]))
    progress: dict[str, list[tuple[float, float | None]]] = {}
    for at, text in lines:
        match = LINE.match(text)
        if match:
            eta = seconds_of(match["eta"]) if match["eta"] else None
            progress.setdefault(match["phase"], []).append((at, eta))
    phases = {}
    for phase, seen in progress.items():
        first, last = seen[0][0], seen[-1][0]
        span = last - first
        middle = [(at, eta) for at, eta in seen
                  if eta is not None and span > 0 and 0.1 <= (at - first) / span <= 0.9 and last > at]
        of_wall = [abs(eta - (last - at)) / span for at, eta in middle]
        of_left = [abs(eta - (last - at)) / (last - at) for at, eta in middle]
        missing = sum(eta is None for at, eta in seen[:-1])
        phases[phase] = {"lines": len(seen), "without_eta": missing, "wall_seconds": round(span, 1),
                         "median_error": statistics.median(of_wall) if of_wall else None,
                         "worst_error": max(of_wall) if of_wall else None,
                         "median_error_of_time_left": statistics.median(of_left) if of_left else None}
    return {"plan_seconds": estimate, "wall_seconds": round(wall, 1), "plan_error": (estimate - wall) / wall,
            "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", nargs="+", default=["quickstart", "halving", "cifar10-fast"])
    parser.add_argument("--data", default=str(REPO / "data" / "cifar-10-batches-py"))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each study, each on a fresh storage")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hpsearch-estimates-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results = {f"{study}#{k}" if args.repeats > 1 else study: measure(study, workdir, args.data, k)
                   for study in args.studies for k in range(1, args.repeats + 1)}
    rows = []
    for study, r in results.items():
        rows.append((f"{study}: plan", f"{r['plan_seconds']:.0f} s for a run of {r['wall_seconds']:.0f} s: "
                                       f"{r['plan_error']:+.0%} (goal within 25 %)"))
        for phase, p in r["phases"].items():
            if p["median_error"] is None:
                rows.append((f"{study}: {phase} ETA", f"no ETA in {p['lines']} lines"))
                continue
            rows.append((f"{study}: {phase} ETA", f"phase end off by {p['median_error']:.0%} of its "
                                                  f"{p['wall_seconds']:.0f} s (median; worst {p['worst_error']:.0%}; "
                                                  f"{p['median_error_of_time_left']:.0%} of the time left), "
                                                  f"{p['without_eta']} of {p['lines']} lines without one (goal: median "
                                                  "within 25 %)"))
    rows.append(("load average before / after", f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"))
    report("estimates", rows, {"results": results})


if __name__ == "__main__":
    main()
