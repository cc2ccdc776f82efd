"""Per-trial bookkeeping as a study grows, beside Optuna's own, and throughput of N workers on PostgreSQL.

    python benchmarks/scale.py                                   # grids of 100, 1,000, 10,000; SQLite and PostgreSQL
    python benchmarks/scale.py --sizes 100 1000 --storages sqlite --workers  # a quick look
    python benchmarks/scale.py --workers 1 2 4 8 16 --worker-points 2000         # the scale-out part only
    python benchmarks/scale.py --ray                   # 1 and 2 workers placed by Ray against as many local ones

The trainable is trivial (synthetic data, ``num_iters: 2``), so what is measured is everything around training.
Each measurement runs in a fresh process on a fresh database and times the study itself (not interpreter start-up):
hpsearch's ``Driver.run`` with tracking off and on (a local SQLite MLflow store), and Optuna's ``study.optimize``
with a ``GridSampler`` over the same grid and a trivial objective on the same kind of storage. Per-trial time is wall
time over trials; hpsearch always runs the whole grid. Optuna's ``GridSampler`` compares every grid point with every
trial for each new one, so above ``--cap`` (1,000) points Optuna runs only its first ``--optuna-cap`` (200) trials:
its time per trial grows with every trial, so its first ones flatter it.

Workers: ``hpsearch run --workers N`` on a PostgreSQL storage, trials per second from the first trial's start to the
last one's end, then the exactly-once check (every point one COMPLETE trial, nothing RUNNING or WAITING), and where
the machine's CPU went meanwhile: the workers' own CPU seconds, and the rest (PostgreSQL's server processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import yaml

from _common import HPSEARCH, report

PG_ADMIN = os.environ.get("HPSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

HPSEARCH_RUN = """
import json, sys, time
from hpsearch.engine.driver import Budget, Driver
from hpsearch.spec.build import load_spec
spec_path, url, cap, mlflow_uri = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = load_spec(spec_path)
listener = None
if mlflow_uri:
    from hpsearch.tracking import MlflowTracker
    listener = MlflowTracker(spec, mlflow_uri, echo=lambda m: None)
driver = Driver(spec, url, echo=lambda m: None, listener=listener)
driver.data
start = time.perf_counter()
driver.run(Budget(max_trials=cap or None))
wall = time.perf_counter() - start
tracking = listener.seconds if listener else 0.0
trials = [t for t in driver.trials() if t["state"] == "COMPLETE"]
print(json.dumps({"wall": wall, "trials": len(trials), "mlflow_seconds": tracking}))
"""

OPTUNA_RUN = """
import json, sys, time, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, grid, cap = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
study = optuna.create_study(study_name="bench", storage=url, sampler=optuna.samplers.GridSampler(grid, seed=0),
                            direction="maximize")
def objective(trial):
    return sum(trial.suggest_float(name, min(values), max(values)) for name, values in grid.items())
points = 1
for values in grid.values():
    points *= len(values)
start = time.perf_counter()
study.optimize(objective, n_trials=cap or points)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "trials": len(study.trials)}))
"""


def grid_of(points: int) -> dict[str, list[float]]:
    """A two-parameter grid of exactly ``points`` points (10 x points/10, or 1 x points when small)."""
    rows = 10 if points % 10 == 0 and points >= 100 else 1
    return {"learning_rate": [round(0.001 * (k + 1), 6) for k in range(rows)],
            "reg": [round(1e-6 * k, 9) for k in range(points // rows)]}


def spec_of(points: int, name: str = "scale") -> dict:
    return {"name": name, "seed": 0,
            "data": {"dataset": "synthetic", "num_train": 100, "num_val": 20, "num_test": 20},
            "defaults": {"hidden_size": 4, "learning_rate": 0.05, "num_iters": 2, "batch_size": 10, "std": 0.01},
            "tracking": {"enabled": False}, "pruner": {"type": "none"},
            "phases": [{"name": "grid", "sampler": "grid", "grid": grid_of(points)}]}


class Database:
    """A fresh database per measurement: a SQLite file in a temporary folder, or a new PostgreSQL database."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder = kind, folder
        self.name = f"hpsearch_bench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.folder / (self.name + '.db')}"
        self._admin("CREATE DATABASE")
        return PG_ADMIN.rsplit("/", 1)[0] + f"/{self.name}"

    def __exit__(self, *exc: object) -> None:
        if self.kind == "postgresql":
            self._admin("DROP DATABASE IF EXISTS", " WITH (FORCE)")

    def _admin(self, verb: str, suffix: str = "") -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'{verb} "{self.name}"{suffix}'))
        engine.dispose()


def _python(code: str, *args: str, cwd: Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_trial(kind: str, points: int, limit: int, tool: str, tracking: bool = False) -> dict:
    """Milliseconds per trial of ``tool`` on a fresh ``kind`` database; ``limit`` > 0 runs only that many trials."""
    with tempfile.TemporaryDirectory() as tmp, Database(kind, Path(tmp)) as url:
        folder = Path(tmp)
        if tool == "optuna":
            found = _python(OPTUNA_RUN, url, json.dumps(grid_of(points)), str(limit), cwd=folder)
        else:
            path = folder / "spec.yaml"
            path.write_text(yaml.safe_dump(spec_of(points)))
            mlflow_uri = f"sqlite:///{folder / 'mlflow.db'}" if tracking else ""
            found = _python(HPSEARCH_RUN, str(path), url, str(limit), mlflow_uri, cwd=folder)
    found["ms_per_trial"] = 1000 * found["wall"] / found["trials"]
    return found


def _machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine spent busy, and in all, since boot (from /proc/stat)."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def workers_run(n: int, points: int, ray: bool = False) -> dict:
    """``run --workers n`` (``ray``: ``run --ray local --workers n``, each worker a Ray task) on a fresh PostgreSQL
    database: trials per second from the first trial's start to the last one's end (Ray's start is not in it), and
    whether every point finished exactly once."""
    import resource

    import optuna

    with tempfile.TemporaryDirectory() as tmp, Database("postgresql", Path(tmp)) as url:
        folder = Path(tmp)
        path = folder / "spec.yaml"
        path.write_text(yaml.safe_dump(spec_of(points, "workers")))
        env = {**os.environ, "HPSEARCH_STORAGE": url}
        busy_before, all_before = _machine_cpu()
        ours_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        # --allow-many-workers: 16 workers on 2 cores is the oversubscription this measures
        placed = ["--ray", "local"] if ray else ["--allow-many-workers"]
        done = subprocess.run([*HPSEARCH, "run", str(path), "--workers", str(n), *placed], cwd=folder,
                              env={**env, "RAY_USAGE_STATS_ENABLED": "0"}, capture_output=True, text=True)
        ours_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_after, all_after = _machine_cpu()
        if done.returncode != 0:
            raise SystemExit(f"{n} workers failed:\n{done.stderr[-3000:]}")
        trials = optuna.load_study(study_name="workers.grid", storage=url).get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        points_done = sorted(t.user_attrs["point"] for t in complete)
        exactly_once = points_done == list(range(points)) and len(trials) == points
        starts = [t.datetime_start.timestamp() for t in complete]
        ends = [t.datetime_complete.timestamp() for t in complete]
    # where the machine's CPU went while they ran: the workers (and their parent), or PostgreSQL and the rest
    machine = busy_after - busy_before
    workers = (ours_after.ru_utime + ours_after.ru_stime) - (ours_before.ru_utime + ours_before.ru_stime)
    return {"workers": n, "ray": ray, "trials_per_s": len(complete) / (max(ends) - min(starts)),
            "exactly_once": exactly_once,
            "cpu_busy": machine / (all_after - all_before), "workers_cpu_s": workers,
            "others_cpu_s": max(machine - workers, 0.0)}


def ray_against_local(counts: list[int], points: int, repeats: int) -> None:
    """Trials per second of n workers placed by Ray against n local workers, measured alternately (so that a
    slower stretch of the machine falls on both), the median of ``repeats`` each; exactly once in every run."""
    import statistics

    rows: list[tuple[str, str]] = []
    result: dict = {"points": points, "repeats": repeats, "ray": []}
    for n in counts:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(repeats):
            for ray in (False, True):
                runs[ray].append(workers_run(n, points, ray=ray))
        local, placed = (statistics.median(run["trials_per_s"] for run in runs[ray]) for ray in (False, True))
        once = all(run["exactly_once"] for ray in runs for run in runs[ray])
        line = {"workers": n, "local_trials_per_s": round(local, 2), "ray_trials_per_s": round(placed, 2),
                "ray_cost": round(1 - placed / local, 3), "exactly_once": once,
                "local_runs": [round(run["trials_per_s"], 2) for run in runs[False]],
                "ray_runs": [round(run["trials_per_s"], 2) for run in runs[True]]}
        rows.append((f"postgresql {n} workers, {points} points",
                     f"Ray {placed:6.1f} trials/s vs local {local:6.1f} ({line['ray_cost']:+.1%} cost; goal <= 10 %), "
                     f"exactly once in all {2 * repeats} runs: {once}"))
        result["ray"].append(line)
    report("scale_ray", rows, result)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--storages", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--cap", type=int, default=1000, help="above this many points, Optuna runs only its first "
                                                                 "OPTUNA_CAP trials")
    parser.add_argument("--optuna-cap", type=int, default=200,
                        help="Optuna's trials above --cap points (its cost per trial grows with them: this flatters it)")
    parser.add_argument("--tracking-up-to", type=int, default=1000, help="measure tracking on up to this size")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    parser.add_argument("--worker-points", type=int, default=2000)
    parser.add_argument("--ray", action="store_true", help="only Ray's placement: 1 and 2 workers as Ray tasks "
                        "(--ray local) beside as many local workers, alternately, --repeats times each")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.ray:
        ray_against_local(args.workers if args.workers != [1, 2, 4, 8, 16] else [1, 2], args.worker_points,
                          args.repeats)
        return

    rows: list[tuple[str, str]] = []
    result: dict = {"per_trial": [], "workers": []}
    for kind in args.storages:
        for points in args.sizes:
            ours = per_trial(kind, points, 0, "hpsearch")
            theirs = per_trial(kind, points, args.optuna_cap if points > args.cap else 0, "optuna")
            line = {"storage": kind, "points": points, "trials": ours["trials"],
                    "hpsearch_ms": round(ours["ms_per_trial"], 2), "optuna_ms": round(theirs["ms_per_trial"], 2),
                    "ratio": round(ours["ms_per_trial"] / theirs["ms_per_trial"], 3)}
            text = (f"{ours['ms_per_trial']:7.1f} ms vs Optuna {theirs['ms_per_trial']:7.1f} ms "
                    f"({line['ratio']:.2f}x)")
            if points <= args.tracking_up_to:
                tracked = per_trial(kind, points, 0, "hpsearch", tracking=True)
                line["tracking_on_ms"] = round(tracked["ms_per_trial"], 2)
                line["tracking_adds_ms"] = round(tracked["ms_per_trial"] - ours["ms_per_trial"], 2)
                text += f"; tracking on {tracked['ms_per_trial']:6.1f} ms (+{line['tracking_adds_ms']:.1f})"
            rows.append((f"{kind} {points:>6} points ({ours['trials']} trials)", text))
            result["per_trial"].append(line)
        lines = [r for r in result["per_trial"] if r["storage"] == kind]
        if len(lines) > 1:
            flat = lines[-1]["hpsearch_ms"] / lines[0]["hpsearch_ms"]
            rows.append((f"{kind} flatness {lines[-1]['points']} / {lines[0]['points']} points",
                         f"{flat:.2f}x (goal <= 1.3x)"))
            result[f"{kind}_flatness"] = round(flat, 3)
    one = None
    for n in args.workers:
        found = workers_run(n, args.worker_points)
        one = one or found["trials_per_s"]
        found["speedup"] = round(found["trials_per_s"] / one, 2)
        rows.append((f"postgresql {n:>2} workers, {args.worker_points} points",
                     f"{found['trials_per_s']:6.1f} trials/s ({found['speedup']:.2f}x one worker), "
                     f"exactly once: {found['exactly_once']}; CPU {found['cpu_busy']:.0%} busy: workers "
                     f"{found['workers_cpu_s']:.0f} s, PostgreSQL and the rest {found['others_cpu_s']:.0f} s"))
        result["workers"].append({k: round(v, 2) if isinstance(v, float) else v for k, v in found.items()})
    report("scale", rows, result)


if __name__ == "__main__":
    main()
