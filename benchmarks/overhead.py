"""Where a study's wall time goes: training, data loading, the study machinery (Optuna, storage), MLflow tracking.

    python benchmarks/overhead.py [--cifar data/cifar-10-batches-py]

Runs the quickstart (and, with --cifar, a 12-trial CIFAR-10 grid) twice in fresh folders: with tracking and without.
Training is the sum of the backends' own timings of every trial; data loading is timed separately; tracking's cost
is the difference in wall time between the two runs (it works in its own process). Goal: all but training <= 3 %.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from _common import HPSEARCH, REPO, report, timed


def cifar_spec(path: str) -> dict:
    spec = yaml.safe_load((REPO / "studies" / "cifar10-twolayer.yaml").read_text())
    spec["data"]["path"] = path
    spec["name"] = "bench-overhead-cifar"
    spec["storage"] = None
    spec["phases"] = [{"name": "grid", "sampler": "grid",
                       "grid": {"hidden_size": [60, 100], "learning_rate": [1e-3, 1e-4], "reg": [0.1, 0.25, 0.35]}}]
    return {k: v for k, v in spec.items() if v is not None}


def measure(spec: dict) -> dict:
    from hpsearch.engine.training import load_data
    from hpsearch.spec.build import load_spec

    results = {}
    for tracking in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "spec.yaml"
            path.write_text(yaml.safe_dump({**spec, "tracking": {"enabled": tracking}}))
            wall = timed([*HPSEARCH, "run", str(path)], cwd=Path(tmp))
            timed([*HPSEARCH, "export", str(path), "--output", "t.json"], cwd=Path(tmp))
            rows = json.loads((Path(tmp) / "t.json").read_text())
            results[tracking] = {"wall": wall, "trials": len(rows)}
            if not tracking:
                loaded = load_spec(path)
                start = time.perf_counter()
                load_data(loaded)
                results["data"] = time.perf_counter() - start
                results["training"] = sum(r["duration_seconds"] or 0 for r in rows)  # claim to finish
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cifar", help="a CIFAR-10 folder; adds a 12-trial CIFAR-10 grid")
    args = parser.parse_args()
    studies = {"quickstart": yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())}
    studies["quickstart"].pop("storage")
    if args.cifar:
        studies["cifar10"] = cifar_spec(str(Path(args.cifar).resolve()))
    rows, result = [], {}
    for name, spec in studies.items():
        r = measure(spec)
        wall = r[False]["wall"]
        tracking = max(r[True]["wall"] - wall, 0.0)
        machinery = max(wall - r["training"] - r["data"], 0.0)
        total = wall + tracking
        shares = {"training": r["training"] / total, "data": r["data"] / total, "study machinery": machinery / total,
                  "mlflow tracking": tracking / total}
        rows.append((f"{name}: wall with / without tracking", f"{r[True]['wall']:.1f} s / {wall:.1f} s, "
                                                               f"{r[False]['trials']} trials"))
        rows += [(f"{name}: {part}", f"{share:6.1%}") for part, share in shares.items()]
        rows.append((f"{name}: all but training", f"{1 - shares['training']:6.1%} (goal <= 3 %)"))
        result[name] = {k: round(v, 4) for k, v in shares.items()} | {"wall_s": round(total, 2)}
    report("overhead", rows, result)


if __name__ == "__main__":
    main()
