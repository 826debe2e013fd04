"""`edgerun bench`: prefill and decode tokens/s, optionally against llama.cpp in the same run.

Both engines get the same file, thread count and token counts; runs alternate
(edgerun, llama.cpp, edgerun, ...) so drift on a shared machine hits both, and the table
reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

_TEXT = ("The quick brown fox jumps over the lazy dog while the engineers measure how fast a "
         "language model reads its prompt and writes its answer, one token after another. ")


def _prompt_ids(tokenizer: Any, n: int) -> list[int]:
    ids = tokenizer.encode(_TEXT, add_bos=False)
    out = ([tokenizer.bos_id] if tokenizer.add_bos else [])
    while len(out) < n:
        out += ids
    return out[:n]


def bench_edgerun(runner: Any, prompt: list[int], gen: int) -> dict[str, float]:
    """One prefill of `prompt` from an empty cache, then `gen` greedy decode steps."""
    from edgerun.generate import prefill
    from edgerun.runtime.runner import SeqInput

    table = runner.contiguous_table(len(prompt) + gen)
    t0 = time.perf_counter()
    logits = prefill(runner, prompt)
    t1 = time.perf_counter()
    pos = len(prompt)
    for _ in range(gen):
        tok = int(np.argmax(logits))
        (logits,) = runner.forward([SeqInput(np.array([tok], np.int32), pos, table)])
        pos += 1
    t2 = time.perf_counter()
    return {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": gen / (t2 - t1)}


def bench_llamacpp(llm: Any, prompt: list[int], gen: int) -> dict[str, float]:
    """The same measurement through llama-cpp-python's low-level eval."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for _ in range(gen):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    t2 = time.perf_counter()
    return {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": gen / (t2 - t1)}


def run_bench(model: str, threads: int, prompt_tokens: int, gen_tokens: int, vs: str | None,
              repeats: int, backend: str = "auto", log: Any = None) -> dict[str, Any]:
    from edgerun.catalog import resolve_model
    from edgerun.runtime.runner import Runner

    path = resolve_model(model)
    n_ctx = prompt_tokens + gen_tokens + 8
    runner = Runner(path, n_ctx=n_ctx, n_threads=threads, backend=backend)
    runner.wait_pinned()  # time the weights where they will stay
    prompt = _prompt_ids(runner.tokenizer, prompt_tokens)
    llm = None
    if vs == "llamacpp":
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                              n_threads_batch=threads, n_batch=max(512, prompt_tokens), verbose=False)
    # Warm-up: compile/caches on both sides, not timed.
    bench_edgerun(runner, prompt[: min(16, len(prompt))], 2)
    if llm is not None:
        bench_llamacpp(llm, prompt[: min(16, len(prompt))], 2)
    runs: dict[str, list[dict[str, float]]] = {"edgerun": [], "llamacpp": []}
    for r in range(repeats):
        runs["edgerun"].append(bench_edgerun(runner, prompt, gen_tokens))
        if log:
            log(f"run {r + 1}/{repeats} edgerun {runs['edgerun'][-1]}")
        if llm is not None:
            runs["llamacpp"].append(bench_llamacpp(llm, prompt, gen_tokens))
            if log:
                log(f"run {r + 1}/{repeats} llama.cpp {runs['llamacpp'][-1]}")

    def med(rs: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(statistics.median(x[k] for x in rs), 2) for k in ("prefill_tok_s", "decode_tok_s")}

    out: dict[str, Any] = {"model": str(path.name), "threads": threads, "prompt_tokens": prompt_tokens,
                           "gen_tokens": gen_tokens, "repeats": repeats, "backend": runner.backend.name,
                           "edgerun": med(runs["edgerun"])}
    if llm is not None:
        out["llamacpp"] = med(runs["llamacpp"])
        out["ratio"] = {k: round(out["edgerun"][k] / out["llamacpp"][k], 3) for k in out["edgerun"]}
        llm.close()
    return out


def format_table(res: dict[str, Any]) -> str:
    lines = [f"model {res['model']}  threads {res['threads']}  prompt {res['prompt_tokens']}  "
             f"gen {res['gen_tokens']}  repeats {res['repeats']} (medians)  backend {res['backend']}",
             f"{'engine':12} {'prefill tok/s':>14} {'decode tok/s':>13}"]
    for eng in ("edgerun", "llamacpp"):
        if eng in res:
            r = res[eng]
            lines.append(f"{eng:12} {r['prefill_tok_s']:14.2f} {r['decode_tok_s']:13.2f}")
    if "ratio" in res:
        r = res["ratio"]
        lines.append(f"{'ratio':12} {r['prefill_tok_s']:13.3f}x {r['decode_tok_s']:12.3f}x")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util
    import sys

    from edgerun.catalog import ModelError
    from edgerun.cli import CLIError
    from edgerun.runtime.runner import default_threads

    if args.vs == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise CLIError("--vs llamacpp needs llama-cpp-python: pip install 'edgerun[reference]'")
    threads = args.threads or default_threads()

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr)

    try:
        res = run_bench(args.model, threads, args.prompt_tokens, args.gen_tokens, args.vs, args.repeats,
                        args.backend, log)
    except ModelError as e:
        raise CLIError(str(e)) from None
    print(json.dumps(res) if args.json else format_table(res))
    return 0


def register(sub: Any) -> None:
    from edgerun.cli import _positive_int

    p = sub.add_parser("bench", help="measure prefill/decode tokens/s (optionally vs llama.cpp)")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--threads", "-t", type=_positive_int, default=None)
    p.add_argument("--prompt-tokens", type=_positive_int, default=201)
    p.add_argument("--gen-tokens", type=_positive_int, default=64)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--vs", choices=["llamacpp"], default=None)
    p.add_argument("--backend", choices=["auto", "native", "numba", "reference"], default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
