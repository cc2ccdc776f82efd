"""Per-iteration time of the NumPy SGD step against the GEMM bound and against PyTorch on the CPU.

    python benchmarks/step.py [--hidden 100] [--batch 200] [--rows 49000] [--rounds 20] [--block 50] [--settle 0.2]

Random data of CIFAR-10's shape (N=49000 rows of D=3072, C=10 classes), float32, H=100, batch 200. Four things are
timed in interleaved blocks of ``--block`` iterations, ``--rounds`` times each (each block after ``--settle`` idle
seconds, so one library's spinning threads do not slow the other), and the medians compared:

- numpy step: what ``TwoLayerNet.train`` runs per iteration (gather the minibatch from a fresh per-epoch permutation,
  forward, cross-entropy + L2, backward, in-place SGD update);
- GEMM bound: the two big products alone, X W1 (B, D)x(D, H) and X^T dH (D, B)x(B, H), into preallocated outputs
  on a minibatch already in cache;
- torch step: the same step in PyTorch on the CPU (index_select gather, addmm + relu, cross_entropy + L2 term,
  backward, SGD update), with torch.set_num_threads equal to the BLAS threads threadpoolctl reports.

- gather alone: the numpy step's copy of B random rows out of the whole training set, a read from memory that the
  GEMM bound's cached minibatch does not pay; "numpy / (GEMM bound + gather)" is the step against both floors.

After them, ``TwoLayerNet.train`` end to end over two epochs (per-epoch validation accuracy included). Goals: numpy step <= 1.15x the GEMM bound and <= 0.9x the torch step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_info

from _common import report
from hpsearch.backends.numpy_twolayer import TwoLayerNet
from hpsearch.backends.sgd import _SGDStep

D, C = 3072, 10
LR, REG = 1e-3, 0.25


def blas_threads() -> int:
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


class Batches:
    """Minibatch indices from a fresh permutation per epoch, as the training loop draws them."""

    def __init__(self, rows: int, batch: int, seed: int = 0) -> None:
        self.rng, self.rows, self.batch = np.random.default_rng(seed), rows, batch
        self.order, self.k = self.rng.permutation(rows), 0

    def next(self) -> np.ndarray:
        if (self.k + 1) * self.batch > self.rows:
            self.order, self.k = self.rng.permutation(self.rows), 0
        self.k += 1
        return self.order[(self.k - 1) * self.batch:self.k * self.batch]


def numpy_step(X: np.ndarray, y: np.ndarray, hidden: int, batch: int) -> Callable[[], None]:
    net = TwoLayerNet(D, hidden, C, std=1e-4, seed=0, dtype=np.float32)
    step, batches = _SGDStep(net.params, batch), Batches(len(X), batch, seed=1)
    return lambda: step.run(X, y, batches.next(), LR, REG)


def gather_only(X: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], None]:
    step, batches = _SGDStep(TwoLayerNet(D, 1, C, dtype=np.float32).params, batch), Batches(len(X), batch, seed=2)
    return lambda: step.gather(X, y, batches.next())


def gemm_bound(X: np.ndarray, hidden: int, batch: int) -> Callable[[], None]:
    rng = np.random.default_rng(3)
    X_batch = np.ascontiguousarray(X[:batch])  # (B, D)
    W1 = (1e-4 * rng.standard_normal((D, hidden))).astype(np.float32)  # (D, H)
    dhidden = rng.standard_normal((batch, hidden), dtype=np.float32)  # (B, H)
    out_hidden, out_dW1 = np.empty((batch, hidden), np.float32), np.empty((D, hidden), np.float32)

    def products() -> None:
        np.matmul(X_batch, W1, out=out_hidden)
        np.matmul(X_batch.T, dhidden, out=out_dW1)

    return products


def torch_step(X: np.ndarray, y: np.ndarray, hidden: int, batch: int) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    W1 = (1e-4 * torch.randn(D, hidden, generator=generator)).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    W2 = (1e-4 * torch.randn(hidden, C, generator=generator)).requires_grad_()
    b2 = torch.zeros(C, requires_grad=True)
    params = [W1, b1, W2, b2]
    X_batch = torch.empty(batch, D)
    batches = Batches(len(X), batch, seed=1)

    def step() -> None:
        index = torch.from_numpy(batches.next())
        torch.index_select(X_t, 0, index, out=X_batch)
        scores = torch.addmm(b2, torch.relu(torch.addmm(b1, X_batch, W1)), W2)  # (B, C)
        loss = torch.nn.functional.cross_entropy(scores, y_t[index]) + REG * ((W1 * W1).sum() + (W2 * W2).sum())
        loss.backward()
        with torch.no_grad():
            for param in params:
                param.sub_(param.grad, alpha=LR)
                param.grad = None
        loss.item()  # the training loop needs the loss as a number every step (divergence check, history)

    return step


def per_iteration(fn: Callable[[], None], block: int, settle: float = 0.0) -> float:
    """Seconds per call over ``block`` calls, after ``settle`` seconds idle and one untimed call.

    The idle time lets the other library's spinning worker threads (OpenBLAS's, OpenMP's) go to sleep: on a small
    machine they would otherwise take cores from whichever library is being timed.
    """
    time.sleep(settle)
    fn()
    start = time.perf_counter()
    for _ in range(block):
        fn()
    return (time.perf_counter() - start) / block


def train_per_iteration(X: np.ndarray, y: np.ndarray, hidden: int, batch: int) -> float:
    """TwoLayerNet.train end to end over two epochs, per-epoch validation accuracy (1000 rows) included."""
    iterations = 2 * (len(X) // batch)
    net = TwoLayerNet(D, hidden, C, std=1e-4, seed=0, dtype=np.float32)
    start = time.perf_counter()
    net.train(X, y, X[:1000], y[:1000], learning_rate=LR, reg=REG, num_iters=iterations, batch_size=batch, seed=0)
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rows", type=int, default=49000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--settle", type=float, default=0.2, help="idle seconds before each timed block")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # other processes on a small machine take cores from the BLAS threads
    threads = blas_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, D), dtype=np.float32)  # (N, D)
    y = rng.integers(0, C, size=args.rows)
    candidates = {
        "numpy step": numpy_step(X, y, args.hidden, args.batch),
        "GEMM bound": gemm_bound(X, args.hidden, args.batch),
        "torch step": torch_step(X, y, args.hidden, args.batch),
        "gather alone": gather_only(X, y, args.batch),
    }
    names = list(candidates)
    for name in names:  # warm-up: first touches, thread pools, allocator
        per_iteration(candidates[name], args.block)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            samples[name].append(per_iteration(candidates[name], args.block, args.settle))
    ms = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
    end_to_end = 1e3 * statistics.median(train_per_iteration(X, y, args.hidden, args.batch) for _ in range(3))
    vs_gemm, vs_torch = ms["numpy step"] / ms["GEMM bound"], ms["numpy step"] / ms["torch step"]
    vs_floor = ms["numpy step"] / (ms["GEMM bound"] + ms["gather alone"])
    report("step", [
        ("shape", f"N={args.rows} D={D} H={args.hidden} C={C} B={args.batch} float32, {threads} BLAS/torch threads"),
        ("medians of", f"{args.rounds} interleaved blocks of {args.block} iterations, {args.settle} s idle before"),
        *[(f"{name} ms/iter", f"{value:.3f}") for name, value in ms.items()],
        ("TwoLayerNet.train ms/iter", f"{end_to_end:.3f} (2 epochs, per-epoch val accuracy included)"),
        ("numpy / GEMM bound", f"{vs_gemm:.2f}x (goal <= 1.15x)"),
        ("numpy / (GEMM bound + gather)", f"{vs_floor:.2f}x"),
        ("numpy / torch", f"{vs_torch:.2f}x (goal <= 0.9x)"),
        ("load average before / after", f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"),
    ], {"hidden": args.hidden, "batch": args.batch, "rows": args.rows, "threads": threads,
        "ms_per_iter": {name: round(value, 4) for name, value in ms.items()},
        "train_ms_per_iter": round(end_to_end, 4), "numpy_vs_gemm": round(vs_gemm, 3),
        "numpy_vs_gemm_plus_gather": round(vs_floor, 3), "numpy_vs_torch": round(vs_torch, 3),
        "goals_met": {"gemm": vs_gemm <= 1.15, "torch": vs_torch <= 0.9},
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]})


if __name__ == "__main__":
    main()
