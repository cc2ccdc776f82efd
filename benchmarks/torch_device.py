"""One trial of the depth study ([75, 150], 10 epochs on CIFAR-10) on the CPU and on CUDA; prints the speed-up.

    python benchmarks/torch_device.py --data data/cifar-10-batches-py [--epochs 10]

Without a CUDA device it reports the CPU time alone.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import REPO, report


def depth_study(data: str, epochs: int) -> tuple[Any, Any]:
    """The depth study's spec on the CIFAR-10 batches in ``data``, ``epochs`` epochs a trial, and its data."""
    from hpsearch.engine.training import load_data
    from hpsearch.spec.build import load_spec

    spec = load_spec(REPO / "studies" / "cifar10-mlp-depth.yaml",
                     [f"data.path={data}", f"defaults.num_epochs={epochs}"])
    return spec, load_data(spec)


def timed_trial(spec: Any, data: Any, device: str, **params: Any) -> tuple[float, float]:
    """Seconds and validation accuracy of one trial of the template's [75, 150] network on ``device``."""
    import torch

    from hpsearch.engine.training import train_once

    start = time.perf_counter()
    result = train_once(spec, data, {"hidden_sizes": [75, 150], "device": device, **params}, seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result.val_acc


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO / "data" / "cifar-10-batches-py"))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    spec, data = depth_study(args.data, args.epochs)
    times, accuracy = {}, {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        times[device], accuracy[device] = timed_trial(spec, data, device)
    rows = [(f"{d} seconds", f"{t:.2f} (val_acc {accuracy[d]:.4f})") for d, t in times.items()]
    speedup = times["cpu"] / times["cuda"] if "cuda" in times else None
    rows.append(("speed-up", f"{speedup:.2f}x" if speedup else "no CUDA device here"))
    report("torch_device", rows, {"seconds": times, "val_acc": accuracy, "speedup": speedup,
                                  "gpu": torch.cuda.get_device_name(0) if "cuda" in times else None})


if __name__ == "__main__":
    main()
