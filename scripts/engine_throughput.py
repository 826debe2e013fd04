"""Output tokens/s of the serving engine alone (no HTTP) at several concurrency levels.

    .venv/bin/python scripts/engine_throughput.py -m qwen2.5-coder-0.5b-instruct --concurrency 1,8

Each level runs ``--requests`` greedy requests of ``--prompt-tokens`` random token ids (distinct
per request, so the prefix cache does not help) and exactly ``--max-tokens`` generated tokens,
``c`` at a time, on one engine. Prints a JSON line per level and the ratio of each level to the
first. ``--no-batch-tiles`` measures without the batch tiles (native/tiles.h).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from edgerun.catalog import resolve_model
from edgerun.runtime.runner import Runner
from edgerun.serving.engine import Engine
from edgerun.text.sampling import SamplingParams


def run_level(engine: Engine, conc: int, n_req: int, prompt_tokens: int, max_tokens: int, vocab: int,
              seed: int) -> dict:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1000, min(vocab, 100000), prompt_tokens).tolist() for _ in range(n_req)]
    lock = threading.Lock()
    todo = list(range(n_req))
    out_tokens = [0] * n_req

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            p = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            _, ids, _, _ = engine.generate(prompts[i], p)
            out_tokens[i] = len(ids)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"concurrency": conc, "requests": n_req, "output_tokens": sum(out_tokens),
            "wall_s": round(wall, 2), "output_tok_s": round(sum(out_tokens) / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--no-batch-tiles", action="store_true")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    runner = Runner(resolve_model(args.model), n_ctx=2048, n_threads=args.threads,
                    batch_tiles=not args.no_batch_tiles)
    runner.wait_pinned()
    engine = Engine(runner, max_running=max(levels), max_queue=4 * args.requests).start()
    try:
        run_level(engine, 1, 1, args.prompt_tokens, 8, runner.args.vocab_size, 0)  # warm-up
        rows = [run_level(engine, c, max(args.requests, c), args.prompt_tokens, args.max_tokens,
                          runner.args.vocab_size, 1 + c) for c in levels]
    finally:
        engine.shutdown()
    for r in rows:
        r["vs_first"] = round(r["output_tok_s"] / rows[0]["output_tok_s"], 2)
        r["batch_tiles_mb"] = runner.tile_bytes >> 20
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
