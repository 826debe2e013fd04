"""TTFT with and without a cached ~1,000-token prefix (prefix caching of full KV blocks).

    python scripts/prefix_cache_ttft.py -m qwen2.5-coder-0.5b-instruct --prefix-tokens 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from edgerun.catalog import resolve_model
from edgerun.runtime.runner import Runner
from edgerun.serving.engine import Engine
from edgerun.text.sampling import SamplingParams


def ttft(engine: Engine, ids: list[int]) -> tuple[float, int]:
    """Seconds to the first token and the prompt tokens served from cache."""
    t0 = time.perf_counter()
    first = None
    cached = 0
    for ev in engine.submit(ids, SamplingParams(temperature=0, max_tokens=2)).events():
        if first is None and (ev.text or ev.token_ids):
            first = time.perf_counter() - t0
        if ev.finish_reason:
            cached = ev.usage.cached_tokens
    return (first if first is not None else time.perf_counter() - t0), cached


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    runner = Runner(resolve_model(args.model), n_ctx=2048, n_threads=args.threads, num_blocks=1024)
    engine = Engine(runner).start()
    tok = runner.tokenizer
    words = " ".join(f"item{i} is described in section {i % 17} of the manual;" for i in range(400))
    cold, warm, hits = [], [], []
    try:
        for r in range(args.repeats):
            prefix = tok.encode(f"Document {r}: " + words)[: args.prefix_tokens]
            t_cold, _ = ttft(engine, prefix + tok.encode(" Question A?", add_bos=False))
            t_warm, c = ttft(engine, prefix + tok.encode(" Question B?", add_bos=False))
            cold.append(t_cold)
            warm.append(t_warm)
            hits.append(c)
    finally:
        engine.shutdown()
    res = {"prefix_tokens": args.prefix_tokens, "ttft_uncached_ms": round(statistics.median(cold) * 1e3, 1),
           "ttft_cached_ms": round(statistics.median(warm) * 1e3, 1), "cached_tokens": hits,
           "ratio": round(statistics.median(warm) / statistics.median(cold), 3)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
