"""Serving with and without speculative decoding: N concurrent greedy code requests through the
in-process engine (as `edgerun serve` builds it), alternating configurations, medians.

    python scripts/spec_serve_bench.py -m qwen2.5-coder-1.5b-instruct --draft-model \
        qwen2.5-coder-0.5b-instruct --lookup -n 8 --gen 64 --repeats 2

Prints a table and one JSON line: aggregate generated tokens/s per configuration and its ratio
to plain serving, with the acceptance rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _prompts(n: int) -> list[str]:
    from edgerun.bench import CODE_PROMPTS

    base = list(CODE_PROMPTS.values())
    topics = ["a binary search", "a CSV reader", "an LRU cache", "a rate limiter", "a trie",
              "a JSON pretty printer", "a retry decorator", "a matrix multiply"]
    out = []
    for i in range(n):
        out.append(base[i % len(base)] if i < len(base) else
                   f"Write a Python implementation of {topics[i % len(topics)]} with type hints and tests.")
    return out


def run_once(engine: Any, prompts: list[list[int]], gen: int) -> dict[str, float]:
    from edgerun.text.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=gen)
    before = engine.stats()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as ex:
        outs = list(ex.map(lambda p: engine.generate(p, params), prompts))
    dt = time.perf_counter() - t0
    after = engine.stats()
    n = sum(len(o[1]) for o in outs)
    prop = after["spec_proposed"] - before["spec_proposed"]
    acc = after["spec_accepted"] - before["spec_accepted"]
    return {"tok_s": n / dt, "tokens": n, "acceptance": acc / prop if prop else 0.0, "proposed": prop}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--draft-model", default=None)
    ap.add_argument("--lookup", action="store_true")
    ap.add_argument("-n", "--concurrent", type=int, default=8)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)

    from edgerun.catalog import resolve_model
    from edgerun.runtime.runner import Runner
    from edgerun.serving import speculative as sp
    from edgerun.serving.engine import Engine

    runner = Runner(resolve_model(a.model), n_ctx=2048, n_threads=a.threads,
                    num_blocks=a.concurrent * 2048 // 16, batch_tiles=True)
    runner.wait_pinned()
    specs: dict[str, Any] = {"plain": None}
    if a.draft_model:
        d = sp.load_draft(a.draft_model, runner, batch_tiles=True)
        d.runner.wait_pinned()
        specs["draft"] = sp.Speculator(sp.SpecConfig(draft_model=a.draft_model), runner, d)
    if a.lookup:
        specs["lookup"] = sp.Speculator(sp.SpecConfig(lookup=True), runner)
    tok = runner.tokenizer
    prompts = [tok.encode_chat([{"role": "user", "content": t}]) for t in _prompts(a.concurrent)]
    engines = {k: Engine(runner, max_running=a.concurrent, speculative=s, enable_prefix_caching=False)
               for k, s in specs.items()}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in specs}
    for r in range(a.repeats):
        for k, eng in engines.items():
            with eng:
                runs[k].append(run_once(eng, prompts, a.gen))
            print(f"run {r + 1}/{a.repeats} {k:7} {runs[k][-1]}", flush=True)
    plain = statistics.median(x["tok_s"] for x in runs["plain"])
    rows = []
    for k, rs in runs.items():
        ts = statistics.median(x["tok_s"] for x in rs)
        rows.append({"mode": k, "tok_s": round(ts, 2), "vs_plain": round(ts / plain, 3),
                     "acceptance": round(statistics.median(x["acceptance"] for x in rs), 3)})
    print(f"{a.concurrent} concurrent requests, {a.gen} tokens each, {a.repeats} repeats (medians)")
    print(f"{'mode':8} {'tok/s':>8} {'vs plain':>9} {'accept':>7}")
    for row in rows:
        print(f"{row['mode']:8} {row['tok_s']:8.2f} {row['vs_plain']:8.3f}x {row['acceptance']:7.2f}")
    print(json.dumps({"model": a.model, "draft": a.draft_model, "concurrent": a.concurrent, "gen": a.gen,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
