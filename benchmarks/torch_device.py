"""One trial of the depth study ([75, 150], 10 epochs on CIFAR-10) on the CPU and on CUDA; prints the speed-up.

    python benchmarks/torch_device.py --data data/cifar-10-batches-py [--epochs 10]

Without a CUDA device it reports the CPU time alone.
"""

from __future__ import annotations

import argparse
import time

from _common import REPO, report


def main() -> None:
    import torch

    from hpsearch.engine.training import load_data, train_once
    from hpsearch.spec.build import load_spec

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO / "data" / "cifar-10-batches-py"))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    spec = load_spec(REPO / "studies" / "cifar10-mlp-depth.yaml",
                     [f"data.path={args.data}", f"defaults.num_epochs={args.epochs}"])
    data = load_data(spec)
    times, accuracy = {}, {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        start = time.perf_counter()
        result = train_once(spec, data, {"hidden_sizes": [75, 150], "device": device}, seed=0)
        if device == "cuda":
            torch.cuda.synchronize()
        times[device] = time.perf_counter() - start
        accuracy[device] = result.val_acc
    rows = [(f"{d} seconds", f"{t:.2f} (val_acc {accuracy[d]:.4f})") for d, t in times.items()]
    speedup = times["cpu"] / times["cuda"] if "cuda" in times else None
    rows.append(("speed-up", f"{speedup:.2f}x" if speedup else "no CUDA device here"))
    report("torch_device", rows, {"seconds": times, "val_acc": accuracy, "speedup": speedup,
                                  "gpu": torch.cuda.get_device_name(0) if "cuda" in times else None})


if __name__ == "__main__":
    main()
