"""Measure CPU read bandwidth (GB/s), the roofline for decode.

numpy's vectorised sum releases the GIL, so T Python threads each summing 1/T of a large
array read memory in parallel.

    python scripts/membw.py --threads 1,2 --mb 512
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def read_bandwidth(threads: int, mb: int = 512, reps: int = 7) -> float:
    """Median GB/s of summing an `mb` MiB float32 array split over `threads` threads."""
    a = np.ones(mb * 2**20 // 4, np.float32)
    parts = np.array_split(a, threads)
    times = []
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(np.sum, parts))
        for _ in range(reps):
            t = time.perf_counter()
            list(ex.map(np.sum, parts))
            times.append(time.perf_counter() - t)
    return a.nbytes / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--mb", type=int, default=512)
    args = ap.parse_args()
    for t in (int(x) for x in args.threads.split(",")):
        print(f"threads {t}: read {read_bandwidth(t, args.mb):.1f} GB/s")


if __name__ == "__main__":
    main()
