"""Benchmark the native matvec kernels: GB/s of weight data per type at 1 and 2 threads.

    .venv/bin/python scripts/bench_kernels.py [--types Q4_0,Q6_K] [--threads 1,2] [--batch 1]

Shapes are N x K (output x input) of a Qwen2-0.5B-like model: ffn down, ffn gate/up and the
vocab projection (K=896 is rounded up to 1024 for the 256-blocks K-quants, which real models
store such tensors without). Also prints the ctypes per-call overhead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgerun.backends import native as nv
from edgerun.quant.traits import TRAITS

NAMES = {"F32": 0, "F16": 1, "BF16": 30, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8}
NAMES.update({"Q4_K": 12, "Q5_K": 13, "Q6_K": 14})
SHAPES = [(896, 4864), (4864, 896), (151936, 896)]


def make(qt: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if qt == 0:
        return rng.standard_normal((n, k), dtype=np.float32)
    bs, ts = TRAITS[qt].block_size, TRAITS[qt].type_size
    w = rng.integers(0, 256, (n, k // bs * ts), dtype=np.uint8)
    if qt in (1, 30):
        return (w & 0x3F).astype(np.uint8)  # small finite halves
    v = w.reshape(n, k // bs, ts)
    d = np.array([0.01], np.float16).view(np.uint8)
    if qt == 14:
        v[:, :, 208:210] = d
    else:
        v[:, :, 0:2] = d
    return w


def bench(fn, min_time: float = 0.3, max_reps: int = 2000) -> float:
    fn()
    best = float("inf")
    t_end = time.perf_counter() + min_time
    reps = 0
    while reps < 3 or (time.perf_counter() < t_end and reps < max_reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(NAMES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per cell (best kept)")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    args = ap.parse_args()
    if not nv.available():
        raise SystemExit(f"native kernels unavailable: {nv.load_error()}")
    threads = [int(t) for t in args.threads.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rng = np.random.default_rng(0)
    print(f"isa={nv.isa()}  batch={args.batch}  (GB/s of weight bytes per matmul call; best of reps)")
    hdr = f"{'type':6}" + "".join(f" {f'{n}x{k}@{t}t':>17}" for n, k in shapes for t in threads)
    print(hdr)
    for name in args.types.split(","):
        qt = NAMES[name]
        row = f"{name:6}"
        for n, k0 in shapes:
            bs = TRAITS[qt].block_size
            k = -(-k0 // bs) * bs  # K-quants need K % 256 == 0: 896 -> 1024
            w = make(qt, n, k, rng)
            x = rng.standard_normal((args.batch, k), dtype=np.float32)
            for t in threads:
                nv.set_threads(t)
                dt = bench(lambda w=w, x=x, qt=qt: nv.matmul(qt, w, x), args.min_time, 100000)
                row += f"{w.nbytes / dt / 1e9:7.1f} ({dt * 1e6:6.0f}us)".rjust(18)
            del w
        print(row, flush=True)
    nv.set_threads(1)
    noop = bench(nv.call_overhead_noop, 0.2, 200000)
    w = make(2, 1, 32, rng)
    x = rng.standard_normal((1, 32), dtype=np.float32)
    tiny = bench(lambda: nv.matmul(2, w, x), 0.2, 200000)
    print(f"ctypes call overhead: empty call {noop * 1e6:.2f} us; ", end="")
    print(f"matmul(Q4_0, 1x32) end to end {tiny * 1e6:.2f} us")


if __name__ == "__main__":
    main()
