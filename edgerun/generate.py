"""Single-sequence generation in layers: token steps, a text stream, and plain `generate`.

The serving engine batches many sequences; this module runs one, with the whole KV cache
to itself, for the CLI, perplexity and parity checks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgerun.runtime.runner import Runner, SeqInput
from edgerun.serving.engine import DETERMINISTIC_MAX_ROWS
from edgerun.serving.types import SpecStats, StreamEvent, Timings, Usage
from edgerun.text.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from edgerun.serving.speculative import SeqSpec, Speculator


class ContextOverflowError(ValueError):
    """The prompt does not fit the context window."""


def prefill(runner: Runner, ids: Sequence[int], chunk: int = 512, all_logits: bool = False
            ) -> np.ndarray:
    """Run a prompt from an empty cache in chunks; logits of the last token (or of all)."""
    table = runner.contiguous_table(len(ids))
    outs = []
    for s in range(0, len(ids), chunk):
        part = np.asarray(ids[s: s + chunk], dtype=np.int32)
        (lg,) = runner.forward([SeqInput(part, s, table, want_all_logits=all_logits)])
        outs.append(lg)
    return np.concatenate(outs) if all_logits else outs[-1]


def step_tokens(runner: Runner, prompt: Sequence[int], params: SamplingParams,
                timings: Timings | None = None, spec: Speculator | None = None,
                spec_state: SeqSpec | None = None, prefill_chunk: int = 512) -> Iterator[int]:
    """Yield sampled token ids until EOS or max_tokens (stop strings are the caller's).

    With `spec`, decoding is speculative (serving/speculative.py): the same tokens under greedy
    sampling, the same distribution otherwise; `spec_state` collects its statistics.
    """
    n_prompt = len(prompt)
    if n_prompt == 0:
        raise ValueError("empty prompt")
    if n_prompt >= runner.n_ctx:
        raise ContextOverflowError(f"prompt of {n_prompt} tokens does not fit the context of "
                                   f"{runner.n_ctx} tokens")
    max_new = min(params.max_tokens, runner.n_ctx - n_prompt)
    table = runner.contiguous_table(n_prompt + max_new)
    sampler = Sampler(params)
    history = list(prompt)
    t0 = time.perf_counter()
    logits = prefill(runner, prompt, chunk=prefill_chunk)
    t1 = time.perf_counter()
    if timings is not None:
        timings.ttft_s = t1 - t0
        timings.prefill_tok_s = n_prompt / max(t1 - t0, 1e-9)
    if spec is not None:
        from edgerun.serving.speculative import spec_step_tokens

        yield from spec_step_tokens(runner, spec, prompt, params, table, logits, max_new, spec_state)
        return
    pos = n_prompt
    for i in range(max_new):
        tok = sampler.sample(logits, history)
        yield tok
        history.append(tok)
        if i + 1 == max_new:
            break
        if tok in runner.tokenizer.eos_ids and not params.ignore_eos:
            break
        (logits,) = runner.forward([SeqInput(np.array([tok], np.int32), pos, table)])
        pos += 1


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str
    timings: Timings = field(default_factory=Timings)
    spec: SpecStats | None = None


def stream(runner: Runner, prompt: Sequence[int], params: SamplingParams,
           spec: Speculator | None = None, deterministic: bool = False) -> Iterator[StreamEvent]:
    """Text deltas with stop strings held back until resolved; the last event has a reason.

    With `spec` (speculative decoding) every event carries the request's `SpecStats`.
    `deterministic` prefills in steps of at most DETERMINISTIC_MAX_ROWS rows, as `serve
    --deterministic` does, so the answer is the one the server gives whatever it batches.
    """
    tok = runner.tokenizer
    dec = tok.stream_decoder()
    timings = Timings()
    usage = Usage(prompt_tokens=len(prompt))
    text, sent = "", 0
    hold = max((len(s) for s in params.stop), default=0)
    reason = "length"
    t_start = time.perf_counter()
    t_first = None
    pending: list[int] = []
    st = spec.new_state(params.seed) if spec is not None else None

    def stats() -> SpecStats | None:
        return st.stats() if st is not None else None

    chunk = DETERMINISTIC_MAX_ROWS if deterministic else 512
    for tid in step_tokens(runner, prompt, params, timings, spec, st, prefill_chunk=chunk):
        usage.completion_tokens += 1
        pending.append(tid)
        if t_first is None:
            t_first = time.perf_counter()
        if tid in tok.eos_ids and not params.ignore_eos:
            reason = "stop"
            break
        text += dec.push(tid)
        cut = min((i for i in (text.find(s, max(0, sent - len(s))) for s in params.stop) if i >= 0),
                  default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
            break
        safe = len(text) - hold if hold else len(text)
        if safe > sent:
            yield StreamEvent(text=text[sent:safe], token_ids=pending, usage=usage, timings=timings,
                              spec=stats())
            sent, pending = safe, []
    else:
        text += dec.flush()
    t_end = time.perf_counter()
    n_dec = usage.completion_tokens - 1
    if t_first is not None and n_dec > 0:
        timings.decode_tok_s = n_dec / max(t_end - t_first, 1e-9)
    timings.total_s = t_end - t_start
    yield StreamEvent(text=text[sent:], token_ids=pending, finish_reason=reason, usage=usage,
                      timings=timings, spec=stats())


def generate(runner: Runner, prompt: Sequence[int], params: SamplingParams,
             spec: Speculator | None = None) -> GenerationResult:
    """Run to completion; returns text, generated ids and timings (and `spec` statistics)."""
    parts, ids = [], []
    ev = StreamEvent()
    for ev in stream(runner, prompt, params, spec):
        parts.append(ev.text)
        ids += ev.token_ids
    return GenerationResult("".join(parts), ids, len(prompt), ev.finish_reason or "length", ev.timings,
                            ev.spec)


def perplexity(runner: Runner, ids: Sequence[int], ctx: int) -> tuple[float, int, int]:
    """PPL over consecutive chunks of `ctx` tokens, each from an empty cache, scoring all
    tokens but each chunk's first. Returns (ppl, scored tokens, chunks)."""
    n_chunks = len(ids) // ctx
    if n_chunks == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one chunk of {ctx}")
    if ctx > runner.n_ctx:
        raise ValueError(f"--ctx {ctx} exceeds the runner context {runner.n_ctx}")
    nll, count = 0.0, 0
    for c in range(n_chunks):
        chunk = list(ids[c * ctx: (c + 1) * ctx])
        logits = prefill(runner, chunk, all_logits=True)  # (ctx, vocab)
        lg = logits[:-1].astype(np.float64)
        m = lg.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)))
        tgt = np.asarray(chunk[1:])
        nll += float(np.sum(lse - lg[np.arange(len(tgt)), tgt]))
        count += len(tgt)
    return math.exp(nll / count), count, n_chunks
