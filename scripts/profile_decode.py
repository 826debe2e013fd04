"""Split a decode step's time into kernel time and Python/binding overhead.

Wraps the backend's entry points with timers, runs N greedy decode steps and prints the
share of the step spent outside the kernels (numpy light ops + Python + ctypes).

    python scripts/profile_decode.py -m qwen2.5-coder-0.5b-instruct --threads 2 -n 32
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from edgerun.catalog import resolve_model
from edgerun.generate import prefill
from edgerun.runtime.runner import Runner, SeqInput


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    r = Runner(resolve_model(args.model), n_ctx=512, n_threads=args.threads, backend=args.backend)
    r.wait_pinned()
    be = r.model.backend
    spent = {"kernel": 0.0, "calls": 0}

    def timed(fn):
        def w(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            spent["kernel"] += time.perf_counter() - t
            spent["calls"] += 1
            return out
        return w

    for name in ("matmul", "get_rows", "ffn", "run_layers", "run_step"):
        if getattr(be, name, None) is not None:
            setattr(be, name, timed(getattr(be, name)))
    ids = r.tokenizer.encode("def quicksort(arr):")
    table = r.contiguous_table(len(ids) + 2 * args.n + 1)
    state = {"logits": prefill(r, ids), "pos": len(ids)}

    def decode(n: int) -> float:
        """Seconds for n greedy steps."""
        t0 = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(state["logits"]))
            (state["logits"],) = r.forward([SeqInput(np.array([tok], np.int32), state["pos"], table)])
            state["pos"] += 1
        return time.perf_counter() - t0

    spent.update(kernel=0.0, calls=0)
    total = decode(args.n)
    calls = spent["calls"]
    if be.name == "native":  # the C side's own clock: binding costs count as overhead
        from edgerun.backends import native

        c0 = native.api_seconds()
        total = decode(args.n)
        spent["kernel"] = native.api_seconds() - c0
    step = total / args.n
    res = {"backend": be.name, "threads": args.threads, "step_ms": round(step * 1e3, 3),
           "kernel_ms": round(spent["kernel"] / args.n * 1e3, 3),
           "overhead_ms": round((total - spent["kernel"]) / args.n * 1e3, 3),
           "overhead_share": round(1 - spent["kernel"] / total, 4),
           "kernel_calls_per_step": calls / args.n}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
