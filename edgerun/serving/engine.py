"""The serving engine: one background thread owns the runner and steps every request.

Each step the scheduler plans a batch (continuous batching, chunked prefill, preemption by
recompute), every scheduled sequence advances in ONE `runner.forward`, then each sequence
whose prompt is fully computed samples its next token with its own seeded `Sampler`.
Output streams to `RequestHandle`s as `StreamEvent`s; text deltas are byte-safe and hold
back anything that could still turn into a stop string.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgerun.runtime.runner import SeqInput
from edgerun.serving.block_pool import KVCacheManager
from edgerun.serving.scheduler import Scheduler, Sequence
from edgerun.serving.types import StreamEvent, Timings, Usage
from edgerun.text.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from edgerun.serving.speculative import Draft, SeqSpec, Speculator


log = logging.getLogger("edgerun.engine")


# With `deterministic=True` a step carries at most this many rows. The native kernels give a
# row the same bits for any batch of up to 16 rows (the register-blocked small-batch kernels,
# with or without batch tiles); from 17 rows on, prefill takes the GEMM path, whose K-quant
# sums run in another order (measured on Q4_K/Q6_K: every row differs from its B=1 result,
# by ~5e-6). Capping the rows keeps each sequence's logits, and the KV it writes (so prefix-
# cache hits too), independent of what it is batched with. Decode batches are never bigger
# than max_running, so only prefill pays: it runs in chunks of 16 rows.
DETERMINISTIC_MAX_ROWS = 16


class QueueFullError(RuntimeError):
    """The waiting queue is at `max_queue`; retry later."""


class RequestError(ValueError):
    """A request the engine refuses before it joins a batch; `param` names the bad field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _vocab_size(runner: Any) -> int | None:
    """The number of token ids the model has embeddings for (None when the runner cannot say)."""
    for owner, name in ((runner, "vocab_size"), (getattr(runner, "args", None), "vocab_size"),
                        (getattr(runner, "tokenizer", None), "vocab_size")):
        v = getattr(owner, name, None) if owner is not None else None
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return None


class EngineObserver(Protocol):
    """Receives per-request measurements from the engine thread (for metrics)."""

    def on_first_token(self, ttft_s: float) -> None: ...
    def on_token(self, itl_s: float) -> None: ...
    def on_finish(self, event: StreamEvent, e2e_s: float) -> None: ...


class _Detok:
    """Incremental detokenizer: the tokenizer's StreamDecoder, or a decode()-based one."""

    def __init__(self, tokenizer: Any) -> None:
        self._sd = tokenizer.stream_decoder() if hasattr(tokenizer, "stream_decoder") else None
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        if self._sd is not None:
            return self._sd.push(token_id)
        self._ids.append(token_id)
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        if self._sd is not None:
            return self._sd.flush()
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class _StopFilter:
    """Holds back text that may be the start of a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add text; returns (text safe to emit, whether a stop string was hit)."""
        self.text += delta
        if not self.stops:
            out, self.sent = self.text[self.sent :], len(self.text)
            return out, False
        first = -1
        for s in self.stops:
            i = self.text.find(s, max(0, self.sent - len(s) + 1))
            if i >= 0 and (first < 0 or i < first):
                first = i
        if first >= 0:
            out = self.text[self.sent : first]
            self.sent = len(self.text)
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


class RequestHandle:
    """The caller's side of one request: iterate `events()` (or `aevents()`), or `cancel()`."""

    def __init__(self, engine: Engine, seq: Sequence) -> None:
        self._engine = engine
        self.seq = seq
        self.request_id = seq.seq_id
        self._q: queue.Queue[StreamEvent] = queue.Queue()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aq: asyncio.Queue[StreamEvent] | None = None
        self.finished = False
        self.cancelled = False

    def _push(self, ev: StreamEvent) -> None:
        with self._lock:
            if ev.finish_reason is not None:
                self.finished = True
            if self._aq is not None and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._aq.put_nowait, ev)
                except RuntimeError:  # loop closed: nobody listens any more
                    pass
            else:
                self._q.put(ev)

    def events(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        """Blocking iterator of events; the last one has `finish_reason` set."""
        while True:
            ev = self._q.get(timeout=timeout)
            yield ev
            if ev.finish_reason is not None:
                return

    async def aevents(self) -> AsyncIterator[StreamEvent]:
        """Async iterator of events for use inside an event loop."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._aq = asyncio.Queue()
            while not self._q.empty():
                self._aq.put_nowait(self._q.get_nowait())
        while True:
            ev = await self._aq.get()
            yield ev
            if ev.finish_reason is not None:
                return

    def cancel(self) -> None:
        """Stop the request; its blocks are freed at the engine's next step at the latest."""
        if not self.finished and not self.cancelled:
            self.cancelled = True
            self._engine._cancel(self)


@dataclass
class _Request:
    handle: RequestHandle
    params: SamplingParams
    sampler: Sampler
    detok: _Detok
    stop: _StopFilter
    t_submit: float = field(default_factory=time.perf_counter)
    t_sched: float = 0.0
    t_first: float = 0.0
    t_last: float = 0.0
    spec: SeqSpec | None = None  # speculative-decoding state, made at its first decode step


@dataclass
class _SpecPlan:
    """One sequence's speculative verification in the current step."""

    proposal: list[int]
    qs: list[Draft] | None
    n_before: int  # tokens of the sequence before this step's output


class Engine:
    """Continuous-batching engine over a `Runner` (see INTERFACES.md)."""

    def __init__(self, runner: Any, max_running: int = 8, max_queue: int = 64, max_batch_tokens: int = 512,
                 enable_prefix_caching: bool = True, deterministic: bool = False,
                 speculative: Speculator | None = None) -> None:
        self.runner = runner
        self.deterministic = deterministic
        if deterministic:  # see DETERMINISTIC_MAX_ROWS
            max_batch_tokens = min(max_batch_tokens, DETERMINISTIC_MAX_ROWS)
            max_running = min(max_running, DETERMINISTIC_MAX_ROWS)
        self.tokenizer = runner.tokenizer
        self.n_ctx = int(runner.n_ctx)
        self.max_queue = max_queue
        self.kv = KVCacheManager(runner.num_blocks, runner.block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, max_running=max_running, max_batch_tokens=max_batch_tokens)
        self.eos_ids: set[int] = set(getattr(self.tokenizer, "eos_ids", ()) or ())
        self.vocab_size = _vocab_size(runner)
        self.observers: list[EngineObserver] = []
        self._inbox: deque[Sequence] = deque()
        self._cancels: deque[Sequence] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._totals = {"requests": 0, "finished": 0, "prompt_tokens": 0, "prompt_tokens_computed": 0,
                        "prompt_tokens_cached": 0, "generation_tokens": 0, "steps": 0, "errors": 0}
        self.spec = speculative
        self._spec_totals = {"spec_proposed": 0, "spec_accepted": 0, "spec_steps": 0}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Engine:
        """Start the engine thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="edgerun-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the thread; unfinished requests end with finish_reason "abort"."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for seq in list(self._inbox) + list(self.scheduler.waiting) + list(self.scheduler.running):
            self._finish(seq, "abort")
        self._inbox.clear()

    def is_alive(self) -> bool:
        """Whether the engine thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- requests -------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams | None = None) -> RequestHandle:
        """Queue a request. Raises QueueFullError, or RequestError (a ValueError naming the field)
        for bad sampling parameters, token ids out of range or a prompt too long.

        Everything that could make a batched step fail is checked here, before the request
        shares a batch with anyone else.
        """
        params = params or SamplingParams()
        try:
            params.validate()
        except ValueError as e:
            raise RequestError(str(e), param=str(e).split()[0]) from None
        prompt_ids = self.check_prompt(prompt_ids)
        max_tokens = min(params.max_tokens, self.n_ctx - len(prompt_ids))
        seq = Sequence(prompt_ids=prompt_ids, max_tokens=max_tokens)
        handle = RequestHandle(self, seq)
        seq.data = _Request(handle, params, Sampler(params), _Detok(self.tokenizer), _StopFilter(params.stop))
        with self._cv:
            if len(self._inbox) + len(self.scheduler.waiting) >= self.max_queue:
                raise QueueFullError(f"queue full ({self.max_queue} waiting)")
            self._inbox.append(seq)
            self._totals["requests"] += 1
            self._cv.notify_all()
        return handle

    def check_prompt(self, prompt_ids: Any, param: str = "prompt") -> list[int]:
        """The prompt as a list of ints, or RequestError: empty, ids outside the vocabulary,
        longer than the context or the KV cache."""
        ids: list[int] = []
        for i, t in enumerate(prompt_ids):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise RequestError(f"{param}[{i}] is not an integer token id", param=param)
            t = int(t)
            if t < 0 or (self.vocab_size is not None and t >= self.vocab_size):
                bound = f"[0, {self.vocab_size})" if self.vocab_size is not None else ">= 0"
                raise RequestError(f"{param}[{i}] = {t} is not a token id of this model (ids are {bound})",
                                   param=param)
            ids.append(t)
        if not ids:
            raise RequestError(f"{param} is empty", param=param)
        if len(ids) >= self.n_ctx:
            raise RequestError(f"{param} has {len(ids)} tokens; the context holds {self.n_ctx} "
                               "(including at least one generated token)", param=param)
        if self.kv.blocks_needed(len(ids) + 1) > self.kv.num_blocks:
            raise RequestError(f"{param} has {len(ids)} tokens; the KV cache holds "
                               f"{self.kv.num_blocks * self.kv.block_size}", param=param)
        return ids

    def generate(self, prompt_ids: list[int], params: SamplingParams | None = None
                 ) -> tuple[str, list[int], str, Usage]:
        """Submit and wait: (text, token ids, finish_reason, usage)."""
        h = self.submit(prompt_ids, params)
        text, ids, ev = [], [], StreamEvent()
        for ev in h.events():
            text.append(ev.text)
            ids.extend(ev.token_ids)
        if ev.finish_reason == "error":
            raise RuntimeError(ev.error or "engine error")
        return "".join(text), ids, ev.finish_reason or "", ev.usage

    def _cancel(self, handle: RequestHandle) -> None:
        with self._cv:
            self._cancels.append(handle.seq)
            self._cv.notify_all()

    def stats(self) -> dict[str, Any]:
        """Snapshot for metrics: queue, KV pool and prefix-cache counters, totals."""
        kv = self.kv
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting) + len(self._inbox),
            "kv_blocks_used": kv.num_used_blocks,
            "kv_blocks_total": kv.num_blocks,
            "kv_blocks_cached": kv.pool.num_cached,
            "kv_usage": kv.usage,
            "prefix_cache_queries": kv.prefix_queries,
            "prefix_cache_hits": kv.prefix_hits,
            "prefix_cache_hit_rate": kv.prefix_hits / kv.prefix_queries if kv.prefix_queries else 0.0,
            "preemptions": self.scheduler.num_preemptions,
            "batch_tiles_bytes": getattr(self.runner, "tile_bytes", 0),
            "spec_mode": self.spec.mode if self.spec is not None else "",
            **self._spec_totals,
            **self._totals,
        }

    # -- engine thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not (self._inbox or self._cancels or self.scheduler.has_work()):
                    self._cv.wait(1.0)
                if self._stop:
                    return
                new = list(self._inbox)
                self._inbox.clear()
                cancels = list(self._cancels)
                self._cancels.clear()
            for seq in new:
                self.scheduler.add(seq)
            for seq in cancels:
                if not seq.data.handle.finished:
                    self._finish(seq, "abort")
            if not self.scheduler.has_work():
                continue
            try:
                self._step()
            except Exception as e:  # a failed step fails its requests, not the server
                log.exception("engine step failed")
                self._totals["errors"] += 1
                for seq in list(self.scheduler.running):
                    self._finish(seq, "error", error=f"{type(e).__name__}: {e}")

    def _step(self) -> None:
        out = self.scheduler.schedule()
        for seq in out.too_large:
            self._finish(seq, "length")
        if not out.scheduled:
            time.sleep(0.001)
            return
        now = time.perf_counter()
        inputs = []
        for s in out.scheduled:
            seq, n = s.seq, s.num_new_tokens
            req: _Request = seq.data
            if not req.t_sched:
                req.t_sched = now
            start = seq.num_computed_tokens
            inputs.append(SeqInput(tokens=np.asarray(seq.token_ids[start : start + n], dtype=np.int32),
                                   start_pos=start, block_table=self.kv.block_table(seq.seq_id)))
        plans = self._spec_plan(out.scheduled, inputs)
        t_fwd = time.perf_counter()
        logits = self._forward([s.seq for s in out.scheduled], inputs)
        self._spec_note_step(out.scheduled, inputs, time.perf_counter() - t_fwd)
        self._totals["steps"] += 1
        now = time.perf_counter()
        for s, lg in zip(out.scheduled, logits, strict=True):
            seq = s.seq
            if lg is None:  # its step failed; the sequence is already finished with the error
                continue
            if seq.seq_id in plans:
                try:
                    self._spec_accept(seq, plans[seq.seq_id], np.asarray(lg), now)
                except Exception as e:  # this sequence's sampling failed, not the batch's
                    self._fail(seq, e, "sampling")
                continue
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                self._totals["prompt_tokens_computed"] += min(s.num_new_tokens,
                                                              seq.num_prompt_tokens - seq.num_computed_tokens)
            seq.num_computed_tokens += s.num_new_tokens
            self.kv.cache_blocks(seq)
            if seq.num_computed_tokens == seq.num_tokens:
                try:
                    self._advance(seq, np.asarray(lg), now)
                except Exception as e:  # sampling or detokenizing failed for this sequence only
                    self._fail(seq, e, "sampling")

    def _forward(self, seqs: list[Sequence], inputs: list[Any]) -> list[Any]:
        """One batched `runner.forward`; if it raises, each sequence is retried alone so the
        failure is charged to the sequence that causes it and the others go on.

        Rerunning is safe: a step only writes the KV slots of its own new positions, and a
        retry writes them again with the same tokens. Returns None in place of the logits
        of every sequence that failed (already finished with finish_reason "error").
        """
        try:
            return list(self.runner.forward(inputs))
        except Exception as e:
            if len(inputs) == 1:
                self._fail(seqs[0], e, "step")
                return [None]
            log.warning("a batched step of %d sequences failed (%s: %s); retrying each alone",
                        len(inputs), type(e).__name__, e)
        out: list[Any] = []
        for seq, inp in zip(seqs, inputs, strict=True):
            try:
                out.append(self.runner.forward([inp])[0])
            except Exception as e:
                self._fail(seq, e, "step")
                out.append(None)
        return out

    def _fail(self, seq: Sequence, exc: Exception, stage: str) -> None:
        """End one sequence with finish_reason "error" (the engine and other requests go on)."""
        log.error("request %s failed in its %s: %s: %s", seq.seq_id, stage, type(exc).__name__, exc,
                  exc_info=exc)
        self._totals["errors"] += 1
        self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")

    def _advance(self, seq: Sequence, logits: np.ndarray, now: float) -> None:
        """Sample one token for a caught-up sequence and stream it."""
        req: _Request = seq.data
        if logits.ndim == 2:
            logits = logits[-1]
        if self.spec is not None:
            self._spec_plain_step(req)
        self._emit(seq, req.sampler.sample(logits, seq.token_ids), now)

    def _emit(self, seq: Sequence, tok: int, now: float) -> bool:
        """Append one generated token and stream it; True when the request finished with it."""
        req: _Request = seq.data
        seq.token_ids.append(tok)
        self._totals["generation_tokens"] += 1
        if not req.t_first:
            req.t_first = now
            for o in self.observers:
                o.on_first_token(now - req.t_submit)
        else:
            for o in self.observers:
                o.on_token(now - req.t_last)
        req.t_last = now
        is_eos = tok in self.eos_ids and not req.params.ignore_eos
        text, hit_stop = ("", False) if is_eos else req.stop.feed(req.detok.push(tok))
        if is_eos or hit_stop:
            self._finish(seq, "stop", text=text, token_ids=[tok], flush=not hit_stop)
        elif seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= self.n_ctx:
            self._finish(seq, "length", text=text, token_ids=[tok])
        else:
            usage = Usage(prompt_tokens=seq.num_prompt_tokens, completion_tokens=seq.num_output_tokens,
                          cached_tokens=max(seq.num_cached_tokens, 0))
            seq.data.handle._push(StreamEvent(text=text, token_ids=[tok], usage=usage,
                                              spec=req.spec.stats() if req.spec is not None else None))
            return False
        return True

    def _finish(self, seq: Sequence, reason: str, text: str = "", token_ids: list[int] | None = None,
                error: str | None = None, flush: bool = True) -> None:
        req: _Request = seq.data
        if req.handle.finished:
            return
        self.scheduler.finish(seq)
        self._spec_release(req)
        if flush:  # emit what the detokenizer and the stop filter held back
            tail, hit = req.stop.feed(req.detok.flush())
            text += tail if hit else tail + req.stop.flush()
        now = time.perf_counter()
        cached = max(seq.num_cached_tokens, 0)
        usage = Usage(prompt_tokens=seq.num_prompt_tokens, completion_tokens=seq.num_output_tokens,
                      cached_tokens=cached)
        t0 = req.t_submit
        first = req.t_first or now
        timings = Timings(
            queued_s=(req.t_sched or now) - t0,
            ttft_s=first - t0 if req.t_first else 0.0,
            prefill_tok_s=(seq.num_prompt_tokens - cached) / max(first - (req.t_sched or t0), 1e-9)
            if req.t_first else 0.0,
            decode_tok_s=(seq.num_output_tokens - 1) / (now - first)
            if seq.num_output_tokens > 1 and now > first else 0.0,
            total_s=now - t0,
        )
        spec = req.spec.stats() if req.spec is not None else None
        ev = StreamEvent(text=text, token_ids=token_ids or [], finish_reason=reason, usage=usage,
                         timings=timings, error=error, spec=spec)
        self._totals["finished"] += 1
        self._totals["prompt_tokens"] += seq.num_prompt_tokens
        self._totals["prompt_tokens_cached"] += cached
        req.handle._push(ev)
        for o in self.observers:
            o.on_finish(ev, now - t0)

    # -- speculative decoding (serving/speculative.py) -------------------------------------
    def set_speculative(self, enabled: bool) -> None:
        """Turn speculation on or off for the next steps (the chat app's toggle); output is the
        same either way under greedy sampling."""
        if self.spec is not None:
            self.spec.enabled = bool(enabled)

    def _spec_plan(self, scheduled: list[Any], inputs: list[SeqInput]) -> dict[int, _SpecPlan]:
        """Extend the inputs of decoding sequences with proposed tokens (one batched verification
        step for all of them); returns the plan of each sequence that got proposals."""
        spec = self.spec
        if spec is None or not spec.enabled:
            return {}
        decoding = [i for i, s in enumerate(scheduled) if s.num_new_tokens == 1
                    and s.seq.num_output_tokens > 0 and s.seq.num_computed_tokens + 1 == s.seq.num_tokens]
        other_rows = sum(s.num_new_tokens for s in scheduled) - len(decoding)
        per_seq = spec.batch_limit(other_rows, len(decoding))
        cands = []
        for i in decoding:
            seq = scheduled[i].seq
            req: _Request = seq.data
            if req.spec is None:
                req.spec = spec.new_state(req.params.seed)
            limit = min(per_seq, seq.max_tokens - seq.num_output_tokens - 1, self.n_ctx - seq.num_tokens - 1)
            k = spec.choose_k(req.spec, limit, batch=len(scheduled))
            if k > 0:
                cands.append((i, seq, k))
        if not cands:
            return {}
        props = spec.propose([(s.data.spec, s.token_ids, k, s.data.params) for _, s, k in cands])
        plans: dict[int, _SpecPlan] = {}
        for (i, seq, _), (prop, qs) in zip(cands, props, strict=True):
            n = seq.num_tokens
            if prop and self.kv.allocate_slots(seq, 1 + len(prop)) is None:
                prop = []  # no KV room for the proposals: a plain step for this one
            if not prop:
                spec.cancel_proposal(seq.data.spec, n)
                continue
            plans[seq.seq_id] = _SpecPlan(prop, qs, n)
            inputs[i] = SeqInput(tokens=np.asarray([seq.token_ids[-1]] + prop, dtype=np.int32),
                                 start_pos=n - 1, block_table=self.kv.block_table(seq.seq_id),
                                 want_all_logits=True)
        return plans

    def _spec_accept(self, seq: Sequence, plan: _SpecPlan, logits: np.ndarray, now: float) -> None:
        """Verify one sequence's proposals, roll back the rejected positions, stream the tokens."""
        from edgerun.serving.speculative import verify

        assert self.spec is not None
        req: _Request = seq.data
        st = req.spec
        assert st is not None
        lg = logits.reshape(len(plan.proposal) + 1, -1)
        new, acc = verify(lg, plan.proposal, plan.qs, seq.token_ids, req.sampler)
        self.spec.after_verify(st, plan.n_before, len(plan.proposal), acc, len(new))
        t = self._spec_totals
        t["spec_proposed"] += len(plan.proposal)
        t["spec_accepted"] += acc
        t["spec_steps"] += 1
        # the last input token and the accepted proposals are in the cache; the rest is rolled back
        seq.num_computed_tokens += 1 + acc
        self.kv.trim(seq, plan.n_before + len(new))
        for tok in new:
            if self._emit(seq, tok, now):
                return
        self.kv.cache_blocks(seq)

    def _spec_note_step(self, scheduled: list[Any], inputs: list[SeqInput], seconds: float) -> None:
        """Time one-sequence decode steps by rows: the unit costs of the adaptive k."""
        if self.spec is None or len(scheduled) != 1:
            return
        seq = scheduled[0].seq
        if seq.num_output_tokens > 0:
            self.spec.costs.note_target(len(inputs[0].tokens), seconds)

    def _spec_plain_step(self, req: _Request) -> None:
        """Count a step that produced one token without proposals (tokens-per-step statistics)."""
        assert self.spec is not None
        if req.spec is None:
            req.spec = self.spec.new_state(req.params.seed)
        req.spec.record(0, 0, 1)

    def _spec_release(self, req: _Request) -> None:
        if self.spec is not None and req.spec is not None:
            self.spec.release(req.spec)
