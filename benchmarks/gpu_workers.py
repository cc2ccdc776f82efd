"""The depth study on GPUs: 1 and 2 workers with a GPU of their own each, and the torch MLP's step time on a GPU
against the CPU.

    python benchmarks/gpu_workers.py --data data/cifar-10-batches-py [--epochs 10] [--gpus 0,1]

Each worker count runs `hpsearch run studies/cifar10-mlp-depth.yaml --workers N --gpus ...` in a fresh folder (SQLite,
tracking off, so the figure is training and the study machinery); trials per second are counted from the first
trial's start to the last one's end, and every trial's recorded device is listed. The step time is one trial of the
study's template ([75, 150]) timed on the CPU and on the first GPU, after a one-epoch warm-up on the GPU.
With one GPU the 2-worker row says it needs two; without CUDA only the CPU's step time is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from _common import HPSEARCH, REPO, report, timed, trials_per_second
from torch_device import depth_study, timed_trial

SPEC = REPO / "studies" / "cifar10-mlp-depth.yaml"


def workers_run(workers: int, gpus: list[str], data: Path, epochs: int) -> dict:
    """One run of the depth study with `workers` workers, a GPU each: trials per second and the devices trained on."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        overrides = [f"data.path={data}", f"storage=sqlite:///{folder / 'depth.db'}", "tracking.enabled=false",
                     f"defaults.num_epochs={epochs}"]
        sets = [part for value in overrides for part in ("--set", value)]
        wall = timed([*HPSEARCH, "run", str(SPEC), "--workers", str(workers), "--gpus", ",".join(gpus[:workers]),
                      *sets], cwd=folder)
        timed([*HPSEARCH, "export", str(SPEC), *sets, "--output", "trials.json"], cwd=folder)
        rows = [row for row in json.loads((folder / "trials.json").read_text()) if row["state"] == "COMPLETE"]
    return {"workers": workers, "trials": len(rows), "wall_s": round(wall, 2),
            "trials_per_s": round(trials_per_second(rows), 4),
            "devices": sorted({row["device"] for row in rows}),
            "best_val_acc": max(row["value"] for row in rows)}


def step_times(data: Path, epochs: int, cuda: bool) -> dict:
    """Milliseconds per training step of the template's MLP on the CPU and, with CUDA, on the first GPU."""
    spec, loaded = depth_study(str(data), epochs)
    steps = epochs * math.ceil(len(loaded.y_train) / spec.defaults["batch_size"])
    if cuda:  # CUDA's context and kernels load on the first use: not a step's time
        timed_trial(spec, loaded, "cuda", num_epochs=1)
    found = {}
    for device in ["cpu"] + (["cuda"] if cuda else []):
        seconds, val_acc = timed_trial(spec, loaded, device)
        found[device] = {"step_ms": round(1000 * seconds / steps, 3), "val_acc": round(val_acc, 4)}
    return found


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO / "data" / "cifar-10-batches-py")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--gpus", help="the GPUs to hand out, as CUDA_VISIBLE_DEVICES names them (default: all)")
    args = parser.parse_args()
    if not (args.data / "data_batch_1").exists():
        raise SystemExit(f"no CIFAR-10 batches in {args.data}: python ../shared/data/make_cifar10.py data")
    data = args.data.resolve()
    cuda = torch.cuda.is_available()
    gpus = args.gpus.split(",") if args.gpus else [str(k) for k in range(torch.cuda.device_count())]
    runs = [workers_run(n, gpus, data, args.epochs) for n in (1, 2) if n <= len(gpus)]
    steps = step_times(data, args.epochs, cuda)
    rows = [(f"{run['workers']} worker(s): trials/s", f"{run['trials_per_s']:.4f} ({run['trials']} trials, "
             f"{run['wall_s']:.1f} s wall, on {', '.join(run['devices'])}, best val_acc {run['best_val_acc']:.4f})")
            for run in runs]
    if len(runs) == 2:
        rows.append(("2 workers against 1", f"{runs[1]['trials_per_s'] / runs[0]['trials_per_s']:.2f}x"))
    rows += [("2 workers: trials/s", f"needs 2 GPUs, {len(gpus)} here")] if len(runs) < 2 else []
    rows += [(f"step on {device}", f"{found['step_ms']:.3f} ms (val_acc {found['val_acc']:.4f})")
             for device, found in steps.items()]
    rows.append(("GPU step against CPU step", f"{steps['cpu']['step_ms'] / steps['cuda']['step_ms']:.1f}x faster"
                 if "cuda" in steps else "no CUDA device here"))
    report("gpu_workers", rows, {"epochs": args.epochs, "runs": runs, "steps": steps,
                                 "gpu": torch.cuda.get_device_name(0) if cuda else None})


if __name__ == "__main__":
    main()
