"""What each worker of a study may use: its slice of the GPUs and its thread count, as environment variables.

A worker is a process of its own, so what it may use is decided before it starts, by the variables every library
reads at its start: ``CUDA_VISIBLE_DEVICES`` (CUDA numbers the devices of a slice from 0, so a worker's ``cuda`` is
its own first GPU) and the thread counts of OpenMP (which PyTorch's intra-op pool follows), OpenBLAS, MKL and
Accelerate. Nothing here imports a library; :func:`plan_workers` is a pure function of what it is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hpsearch.backends.base import visible_devices
from hpsearch.errors import UserError

__all__ = ["THREAD_VARIABLES", "WorkerResources", "check_within", "default_threads", "parse_gpus",
           "plan_cluster_workers", "plan_workers"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
# what CUDA_VISIBLE_DEVICES takes: an index, or a device's UUID (GPU-..., MIG-...)
_DEVICE = re.compile(r"[0-9]+|(GPU|MIG)-[0-9A-Za-z/-]+")


@dataclass(frozen=True)
class WorkerResources:
    """One worker's share: ``gpus`` the devices it sees (None: whatever the machine gives it), ``threads`` for each
    of its numeric libraries."""

    gpus: tuple[str, ...] | None
    threads: int

    def env(self) -> dict[str, str]:
        env = dict.fromkeys(THREAD_VARIABLES, str(self.threads))
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env

    def describe(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.gpus is None:
            return threads
        return f"GPU {','.join(self.gpus)}, {threads}"


def parse_gpus(text: str, option: str = "--gpus") -> tuple[str, ...]:
    """The devices a ``--gpus`` list names, in its order; UserError (one line) for an empty entry, a name
    CUDA_VISIBLE_DEVICES would not take, or a device named twice."""
    entries = [entry.strip() for entry in text.split(",")]
    bad = [entry for entry in entries if not _DEVICE.fullmatch(entry)]
    if bad:
        raise UserError(f"{option} must be a comma-separated list of GPU indices or UUIDs, as CUDA_VISIBLE_DEVICES "
                        f"takes them (e.g. 0,1,2,3). Got {text!r} instead ({bad[0]!r} is none).")
    twice = sorted({entry for entry in entries if entries.count(entry) > 1}, key=entries.index)
    if twice:
        raise UserError(f"{option} names GPU {twice[0]} more than once: two workers would share it. Got {text!r}.")
    return tuple(entries)


def check_within(gpus: tuple[str, ...], given: str | None, option: str = "--gpus") -> None:
    """UserError (one line) for a GPU outside ``given``, the CUDA_VISIBLE_DEVICES this process got (a scheduler's
    allocation): a worker handed it would use another job's GPU. Nothing to check where none is set."""
    allowed = visible_devices(given)
    outside = [gpu for gpu in gpus if gpu not in allowed]
    if allowed and outside:
        raise UserError(f"{option} names GPU {outside[0]}, which this process's CUDA_VISIBLE_DEVICES ({given}) does "
                        "not give it; name GPUs among those.")


def default_threads(workers: int, cores: int) -> int:
    """The cores split between the workers, at least one thread each: by default no run oversubscribes them."""
    return max(1, cores // workers)


def plan_workers(workers: int, cores: int, *, gpus: tuple[str, ...] | None = None, gpus_per_worker: int | None = None,
                 threads: int | None = None, source: str = "--gpus") -> list[WorkerResources]:
    """Each of ``workers`` workers' share.

    gpus: the devices to hand out (``--gpus``, or those PyTorch sees); gpus_per_worker: each worker's slice (default
    1 when there are devices to hand out, else none); threads: each worker's thread count (default: the cores split
    between the workers). UserError (one line) when the devices are too few for the workers, or a slice asked for
    has no devices to come from; ``source`` names where the devices came from in that line.
    """
    if threads is None:
        threads = default_threads(workers, cores)
    if gpus_per_worker == 0 and gpus and source == "--gpus":
        raise UserError("--gpus hands out GPUs, and resources.gpus_per_worker is 0: leave out one or the other.")
    if gpus_per_worker is None:
        gpus_per_worker = 1 if gpus else 0
    if gpus_per_worker == 0:
        return [WorkerResources(None, threads) for _ in range(workers)]
    if gpus is None or len(gpus) < workers * gpus_per_worker:
        have = 0 if gpus is None else len(gpus)
        each = f"{gpus_per_worker} GPU{'s' if gpus_per_worker != 1 else ''} each"
        raise UserError(f"{workers} worker{'s' if workers != 1 else ''} with {each} need{'s' if workers == 1 else ''} "
                        f"{workers * gpus_per_worker} GPUs; {source} gives {have}. Ask for fewer workers or fewer "
                        "GPUs per worker.")
    return [WorkerResources(gpus[i * gpus_per_worker:(i + 1) * gpus_per_worker], threads) for i in range(workers)]


def plan_cluster_workers(workers: int, nodes: Sequence[tuple[float, float]], *, threads: int | None = None,
                         gpus_per_worker: int | None = None) -> tuple[WorkerResources, int]:
    """Each of ``workers`` workers' share of a cluster whose nodes have ``nodes`` (CPUs, GPUs) each, and how many of
    them its nodes run at once.

    threads: each worker's CPUs and threads (default: the CPUs of the nodes with the GPUs a worker asks for, split
    between the workers, as many as still lets every worker run at once); gpus_per_worker: each worker's GPUs
    (default none). UserError (one line) for a share no node has: its workers would wait for it forever.
    """
    gpus = gpus_per_worker or 0

    def fits(threads: int) -> list[int]:  # the workers of ``threads`` threads each node runs at once
        return [min(int(cpus // threads), int(node_gpus // gpus) if gpus else workers) for cpus, node_gpus in nodes]

    if threads is None:  # the most threads at which every worker runs at once, else 1 (the most at once)
        hosts = [cpus for cpus, node_gpus in nodes if node_gpus >= gpus]
        most = max(1, min(int(max(hosts, default=0)), int(sum(hosts)) // workers))
        threads = next((t for t in range(most, 0, -1) if sum(fits(t)) >= workers), 1)
    at_once = fits(threads)
    if not any(at_once):
        each = f"{threads} CPU{'s' if threads != 1 else ''}" + (f" and {gpus} GPU{'s' if gpus != 1 else ''}"
                                                                 if gpus else "")
        have = ", ".join(f"{cpus:g} CPUs/{node_gpus:g} GPUs" for cpus, node_gpus in nodes) or "no node"
        raise UserError(f"Each worker asks for {each}, which no node of the Ray cluster has ({have}); ask for fewer "
                        "with --threads or resources.")
    return WorkerResources(None, threads), min(workers, sum(at_once))
