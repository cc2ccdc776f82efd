"""Start-up costs: ``hpsearch --help`` and a warm CIFAR-10 load.

    python benchmarks/startup.py [--data data/cifar-10-batches-py] [--repeats 5]

``hpsearch --help`` runs as a subprocess (median of --repeats; goal <= 0.3 s). The CIFAR-10 load is
``load_dataset('cifar10', path=...)`` with the default splits, timed inside a fresh interpreter each time (as a
worker process loads it): one first load (which builds the decoded-batch cache in <data>/.hpsearch-cache when it is
absent), then the median of --repeats warm loads (goal <= 0.5 s), and for comparison the median of 3 loads with the
cache switched off (the pickles decoded every time). Then the same with ``preprocess: zca``: one load that finds its
whitening matrix cached (fitted first if it is not), and the median of 3 more: what each trial's process pays for
whitening once the matrix is cached.
Build the data with ``python ../shared/data/make_cifar10.py data``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import HPSEARCH, REPO, report, timed


# Run in a fresh interpreter, as a worker would: it times load_dataset alone, not Python's start-up.
CHILD = """
import sys, time
from hpsearch.data import cifar10, load_dataset
if sys.argv[2] == "off":
    cifar10._read_cache, cifar10._write_cache = (lambda *a: None), (lambda *a, **k: None)
start = time.perf_counter()
load_dataset("cifar10", path=sys.argv[1], preprocess="zca" if sys.argv[2] == "zca" else "center")
print(time.perf_counter() - start)
"""


def load_seconds(data: str, cache: str = "on") -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, data, cache], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"loading {data} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO / "data" / "cifar-10-batches-py"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: CIFAR-10 folder not found; build it with "
                         f"python {REPO.parent / 'shared' / 'data' / 'make_cifar10.py'} {REPO / 'data'}")
    load_before = os.getloadavg()[0]
    help_s = statistics.median(timed([*HPSEARCH, "--help"], cwd=REPO) for _ in range(args.repeats))
    cache = Path(args.data) / ".hpsearch-cache"
    had_cache = cache.is_dir() and any(cache.iterdir())
    first_s = load_seconds(args.data)
    warm_s = statistics.median(load_seconds(args.data) for _ in range(args.repeats))
    uncached_s = statistics.median(load_seconds(args.data, cache="off") for _ in range(3))
    has_cache = cache.is_dir() and any(cache.iterdir())
    load_seconds(args.data, cache="zca")  # fits the whitening matrix where it is not cached yet
    zca_s = statistics.median(load_seconds(args.data, cache="zca") for _ in range(3))
    report("startup", [
        ("hpsearch --help s (median)", f"{help_s:.3f} (goal <= 0.3)"),
        ("cifar10 first load s", f"{first_s:.3f} ({'cache present' if had_cache else 'built the cache'})"),
        ("cifar10 warm load s (median)", f"{warm_s:.3f} (goal <= 0.5)" + ("" if has_cache else ", NO CACHE written")),
        ("cifar10 load without cache s", f"{uncached_s:.3f}"),
        ("cifar10 warm zca load s (median of 3)", f"{zca_s:.3f}"),
        ("load average before / after", f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"),
    ], {"help_s": round(help_s, 4), "first_load_s": round(first_s, 4), "warm_load_s": round(warm_s, 4),
        "uncached_load_s": round(uncached_s, 4), "warm_zca_load_s": round(zca_s, 4), "cache": has_cache,
        "repeats": args.repeats,
        "goals_met": {"help": help_s <= 0.3, "warm_load": warm_s <= 0.5},
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]})


if __name__ == "__main__":
    main()
