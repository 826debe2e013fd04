"""Prefill and decode tokens/s, optionally against llama.cpp in the same run (`edgerun bench`,
whose flags are in edgerun/cli/bench.py).

Both engines get the same file, thread count and token counts; runs alternate
(edgerun, llama.cpp, edgerun, ...) so drift on a shared machine hits both, and the table
reports medians and their ratio.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
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


# ----------------------------------------------------------------------------- speculative decoding

_CODE_SNIPPET = '''def merge_intervals(intervals):
    intervals = sorted(intervals, key=lambda iv: iv[0])
    merged = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
'''

CODE_PROMPTS = {
    "write": "Write a Python function that parses an ISO 8601 date string without using datetime, "
             "with type hints, a docstring and input validation.",
    "explain": "Explain step by step what this code does and what its complexity is:\n\n" + _CODE_SNIPPET,
    "complete": "Complete this Python file: add the missing methods push, pop, peek and __len__ with "
                "docstrings.\n\nclass Stack:\n    \"\"\"A LIFO stack backed by a list.\"\"\"\n\n"
                "    def __init__(self):\n        self._items = []\n",
}


def edit_source(n_funcs: int = 13) -> str:
    """A ~150-line Python module (deterministic) for the "edit this file" prompt."""
    ops = [("add", "+"), ("sub", "-"), ("mul", "*"), ("floordiv", "//"), ("mod", "%"), ("pow", "**"),
           ("max", None), ("min", None)]
    lines = ['"""Small numeric helpers used by the report generator."""', "", "import math",
             "from typing import Iterable", "", ""]
    for i in range(n_funcs):
        name, op = ops[i % len(ops)]
        fn = f"{name}_series_{i}"
        expr = f"a {op} b" if op else f"{name}(a, b)"
        guard = ["        if b == 0:", "            continue"] if name in ("floordiv", "mod") else []
        lines += [f"def {fn}(values: Iterable[int], start: int = {i}) -> list[int]:",
                  f'    """Fold `values` pairwise with {name}, starting from {i}."""',
                  "    out = []",
                  "    a = start",
                  "    for b in values:",
                  *guard,
                  f"        a = {expr}",
                  "        out.append(a)",
                  "    return out", "", ""]
    lines += ["def summary(values: Iterable[int]) -> dict[str, float]:",
              '    """Mean and spread of the values."""',
              "    vals = list(values)",
              "    mean = sum(vals) / len(vals)",
              "    var = sum((v - mean) ** 2 for v in vals) / len(vals)",
              '    return {"mean": mean, "std": math.sqrt(var)}', ""]
    return "\n".join(lines)


def edit_prompt() -> str:
    """Give the module back with one function renamed: the answer repeats the input."""
    return ("Here is a Python module:\n\n```python\n" + edit_source() + "\n```\n\nReturn the whole "
            "module unchanged except that the function mul_series_2 is renamed to multiply_series_2. "
            "Output only the code.")


def _edgerun_decode(runner: Any, ids: list[int], gen: int, spec: Any) -> dict[str, float]:
    from edgerun.generate import generate
    from edgerun.text.sampling import SamplingParams

    res = generate(runner, ids, SamplingParams(temperature=0.0, max_tokens=gen), spec)
    out = {"decode_tok_s": res.timings.decode_tok_s, "tokens": float(len(res.tokens))}
    if res.spec is not None:
        out |= {"acceptance": res.spec.acceptance_rate, "tokens_per_step": res.spec.tokens_per_step}
    return out


def _llamacpp_decode(llm: Any, ids: list[int], gen: int) -> dict[str, float]:
    """Greedy decode through llama-cpp-python's own loop (its speculation included when set)."""
    eos = llm.token_eos()
    n, t_first = 0, 0.0
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True):
        n += 1
        if n == 1:
            t_first = time.perf_counter()
        if tok == eos or n >= gen:
            break
    t_end = time.perf_counter()
    return {"decode_tok_s": (n - 1) / max(t_end - t_first, 1e-9), "tokens": float(n)}


def run_spec_bench(model: str, threads: int, draft: str | None, lookup: bool, draft_max: int | None,
                   gen_tokens: int, vs: str | None, repeats: int, backend: str = "auto",
                   log: Any = None) -> dict[str, Any]:
    """Plain vs speculative greedy decode on code prompts (draft model) and an edit prompt
    (prompt lookup), modes alternating within each repeat; llama.cpp (plain and its
    prompt-lookup decoding) in the same run with `vs`."""
    from edgerun.catalog import resolve_model
    from edgerun.runtime.runner import Runner
    from edgerun.serving import speculative as sp

    path = resolve_model(model)
    runner = Runner(path, n_ctx=4096, n_threads=threads, backend=backend)
    runner.wait_pinned()
    tok = runner.tokenizer
    cases: dict[str, list[int]] = {}
    if draft:
        cases |= {k: tok.encode_chat([{"role": "user", "content": v}]) for k, v in CODE_PROMPTS.items()}
    if lookup:
        cases["edit"] = tok.encode_chat([{"role": "user", "content": edit_prompt()}])
    modes: dict[str, Any] = {"plain": None}
    if draft:
        d = sp.load_draft(draft, runner, n_threads=threads, backend=backend)
        d.runner.wait_pinned()
        modes["draft"] = sp.Speculator(sp.SpecConfig(draft_model=draft, draft_max=draft_max), runner, d)
    if lookup:
        modes["lookup"] = sp.Speculator(sp.SpecConfig(lookup=True, draft_max=draft_max), runner)
    llms: dict[str, Any] = {}
    if vs == "llamacpp":
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        kw = dict(model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                  n_batch=2048, verbose=False)
        llms["llama.cpp"] = llama_cpp.Llama(**kw)
        if lookup:
            llms["llama.cpp lookup"] = llama_cpp.Llama(
                **kw, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
    # warm-up, not timed
    _edgerun_decode(runner, cases[next(iter(cases))][:32], 4, None)
    for llm in llms.values():
        _llamacpp_decode(llm, cases[next(iter(cases))][:32], 4)
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(repeats):
        for case, ids in cases.items():
            for mode, spec in modes.items():
                if mode == "draft" and case == "edit" or mode == "lookup" and case != "edit" and draft:
                    continue  # each proposer on the prompts it is for
                res = _edgerun_decode(runner, ids, gen_tokens, spec)
                runs.setdefault((case, mode), []).append(res)
                if log:
                    log(f"run {r + 1}/{repeats} {case:8} {mode:8} {res}")
            for name, llm in llms.items():
                if lookup and case != "edit":
                    continue  # llama.cpp has no draft-model speculation here: compare it on lookup
                res = _llamacpp_decode(llm, ids, gen_tokens)
                runs.setdefault((case, name), []).append(res)
                if log:
                    log(f"run {r + 1}/{repeats} {case:8} {name:8} {res}")
    rows = []
    for (case, mode), rs in runs.items():
        row = {"case": case, "mode": mode, "prompt_tokens": len(cases[case])}
        for key in ("decode_tok_s", "tokens", "acceptance", "tokens_per_step"):
            vals = [x[key] for x in rs if key in x]
            if vals:
                row[key] = round(statistics.median(vals), 3)
        plain = statistics.median(x["decode_tok_s"] for x in runs[(case, "plain")])
        row["vs_plain"] = round(row["decode_tok_s"] / plain, 3)
        if (case, "llama.cpp lookup") in runs and mode == "lookup":
            ll = statistics.median(x["decode_tok_s"] for x in runs[(case, "llama.cpp lookup")])
            row["vs_llamacpp_lookup"] = round(row["decode_tok_s"] / ll, 3)
        rows.append(row)
    for llm in llms.values():
        llm.close()
    return {"model": path.name, "draft": Path(str(draft)).name if draft else None, "threads": threads,
            "gen_tokens": gen_tokens, "repeats": repeats, "draft_max": draft_max,
            "backend": runner.backend.name, "rows": rows,
            "draft_cost": round(modes["draft"].draft_cost, 3) if draft else None}


def format_spec_table(res: dict[str, Any]) -> str:
    lines = [f"model {res['model']}  draft {res['draft'] or '-'}  threads {res['threads']}  gen "
             f"{res['gen_tokens']}  repeats {res['repeats']} (medians, greedy)  backend {res['backend']}",
             f"{'prompt':9} {'mode':17} {'tok/s':>8} {'vs plain':>9} {'accept':>7} {'tok/step':>9} "
             f"{'tokens':>7}"]
    for r in res["rows"]:
        acc = f"{r['acceptance']:7.2f}" if "acceptance" in r else f"{'-':>7}"
        tps = f"{r['tokens_per_step']:9.2f}" if "tokens_per_step" in r else f"{'-':>9}"
        extra = f"  ({r['vs_llamacpp_lookup']:.2f}x llama.cpp lookup)" if "vs_llamacpp_lookup" in r else ""
        lines.append(f"{r['case']:9} {r['mode']:17} {r['decode_tok_s']:8.2f} {r['vs_plain']:8.2f}x {acc} "
                     f"{tps} {int(r['tokens']):7d}{extra}")
    return "\n".join(lines)
