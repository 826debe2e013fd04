"""Scheduler and engine against a FakeRunner that honours the Runner contract.

The FakeRunner keeps a token per KV slot: it writes each step's tokens to the slots its
block table names and derives the logits from what it reads back, so a wrong block table,
a clobbered slot or a bad prefix-cache hit changes the output.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import Any

import numpy as np
import pytest

from edgerun.serving.block_pool import KVCacheManager
from edgerun.serving.engine import Engine, QueueFullError, _StopFilter
from edgerun.serving.scheduler import Scheduler, Sequence
from edgerun.text.sampling import SamplingParams

BOS, EOS, VOCAB = 256, 257, 258
_PRINTABLE = np.array([c for c in range(32, 127)])


class FakeTokenizer:
    """Byte-level: ids 0-255 are bytes, 256 BOS, 257 EOS."""

    eos_ids = {EOS}
    bos_id = BOS

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        return ([BOS] if add_bos is not False else []) + list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        s = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return s + ("<assistant>" if add_generation_prompt else "")


class FakeRunner:
    """Deterministic stand-in for `edgerun.runtime.runner.Runner`."""

    def __init__(self, num_blocks: int = 64, block_size: int = 4, n_ctx: int = 256, delay: float = 0.0,
                 eos_every: int = 0) -> None:
        self.num_blocks, self.block_size, self.n_ctx = num_blocks, block_size, n_ctx
        self.tokenizer = FakeTokenizer()
        self.vocab_size = VOCAB
        self.model_name = "fake-model"
        self.delay = delay
        self.eos_every = eos_every
        self.slots = np.full(num_blocks * block_size, -1, dtype=np.int64)
        self.batches: list[list[int]] = []  # tokens per sequence of each forward call
        self.lock = threading.Lock()

    def _slot(self, table: np.ndarray, pos: int) -> int:
        return int(table[pos // self.block_size]) * self.block_size + pos % self.block_size

    def logits_for(self, history: list[int]) -> np.ndarray:
        h = zlib.crc32(np.asarray(history[-4:] + [len(history)], dtype=np.int64).tobytes())
        rng = np.random.default_rng(h)
        out = np.full(VOCAB, -1e9, dtype=np.float32)
        out[_PRINTABLE] = rng.standard_normal(len(_PRINTABLE)).astype(np.float32) * 3
        if self.eos_every and h % self.eos_every == 0:
            out[EOS] = 100.0
        return out

    def forward(self, seqs: list[Any]) -> list[np.ndarray]:
        with self.lock:
            if self.delay:
                time.sleep(self.delay)
            written: set[int] = set()
            out = []
            for s in seqs:
                toks = np.asarray(s.tokens)
                assert toks.dtype == np.int32 and toks.ndim == 1 and len(toks) > 0
                end = s.start_pos + len(toks)
                table = np.asarray(s.block_table)
                assert len(table) * self.block_size >= end, "block table does not cover the positions"
                assert len(set(table.tolist())) == len(table), "block used twice in one table"
                assert end <= self.n_ctx
                for i, t in enumerate(toks):
                    slot = self._slot(table, s.start_pos + i)
                    assert slot not in written, "two sequences write one slot in a step"
                    written.add(slot)
                    self.slots[slot] = t
                hist = [int(self.slots[self._slot(table, p)]) for p in range(end)]
                assert -1 not in hist, "reads a KV slot that was never written"
                out.append(self.logits_for(hist))
            self.batches.append([len(s.tokens) for s in seqs])
            return out


def prompt(i: int, n: int = 20) -> list[int]:
    rng = np.random.default_rng(i)
    return [BOS] + rng.integers(97, 123, n - 1).tolist()


def params(i: int, max_tokens: int = 24, **kw: Any) -> SamplingParams:
    if i % 2:
        return SamplingParams(temperature=0, max_tokens=max_tokens, **kw)
    return SamplingParams(temperature=0.9, seed=i, max_tokens=max_tokens, **kw)


def solo(i: int, n: int = 20, max_tokens: int = 24, **kw: Any) -> tuple[str, list[int], str]:
    with Engine(FakeRunner(**kw)) as eng:
        text, ids, fin, _ = eng.generate(prompt(i, n), params(i, max_tokens))
    return text, ids, fin


def run_concurrent(eng: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[tuple]:
    handles = [eng.submit(p, sp) for p, sp in jobs]
    results = []
    for h in handles:
        evs = list(h.events(timeout=30))
        results.append(("".join(e.text for e in evs), [t for e in evs for t in e.token_ids],
                        evs[-1].finish_reason, evs[-1].usage))
    return results


def assert_pool_whole(eng: Engine) -> None:
    deadline = time.time() + 5
    while eng.stats()["running"] and time.time() < deadline:
        time.sleep(0.01)
    assert eng.kv.num_used_blocks == 0
    assert all(b.ref_cnt == 0 for b in eng.kv.pool.blocks)
    assert not eng.kv._tables and not eng.kv._hashes


# -- scheduler policy ------------------------------------------------------------------------


def test_decode_first_then_chunked_prefill() -> None:
    kv = KVCacheManager(num_blocks=64, block_size=4)
    sch = Scheduler(kv, max_running=4, max_batch_tokens=16)
    a = Sequence(prompt_ids=list(range(10)), max_tokens=8)
    sch.add(a)
    out = sch.schedule()
    assert [(s.seq, s.num_new_tokens) for s in out.scheduled] == [(a, 10)]
    a.num_computed_tokens = 10
    a.token_ids.append(5)  # sampled
    b = Sequence(prompt_ids=list(range(100, 140)), max_tokens=8)
    sch.add(b)
    out = sch.schedule()
    assert [(s.seq, s.num_new_tokens) for s in out.scheduled] == [(a, 1), (b, 15)]
    a.num_computed_tokens += 1
    a.token_ids.append(6)
    b.num_computed_tokens += 15
    out = sch.schedule()  # b is running now, yet a's single token still goes first
    assert [(s.seq, s.num_new_tokens) for s in out.scheduled] == [(a, 1), (b, 15)]


def test_max_running_and_preempt_newest() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=4)
    sch = Scheduler(kv, max_running=2, max_batch_tokens=64)
    seqs = [Sequence(prompt_ids=list(range(i * 10, i * 10 + 8)), max_tokens=8) for i in range(3)]
    for s in seqs:
        sch.add(s)
    out = sch.schedule()
    assert [s.seq for s in out.scheduled] == seqs[:2] and list(sch.waiting) == [seqs[2]]
    for s in out.scheduled:
        s.seq.num_computed_tokens += s.num_new_tokens
        s.seq.token_ids.append(1)
    for _ in range(8):  # grow both until the 6-block pool runs out
        out = sch.schedule()
        for s in out.scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens
            s.seq.token_ids.append(1)
        if out.preempted:
            break
    assert out.preempted == [seqs[1]] and sch.running == [seqs[0]]
    assert list(sch.waiting)[:2] == [seqs[1], seqs[2]] and seqs[1].num_computed_tokens == 0


# -- engine ----------------------------------------------------------------------------------


def test_batching_equivalence_8_concurrent() -> None:
    expected = [solo(i) for i in range(8)]
    runner = FakeRunner()
    with Engine(runner, max_running=8) as eng:
        got = run_concurrent(eng, [(prompt(i), params(i)) for i in range(8)])
        assert [g[:3] for g in got] == expected
        assert max(len(b) for b in runner.batches) == 8  # they really ran together
        assert_pool_whole(eng)


def test_preemption_keeps_outputs() -> None:
    expected = [solo(i, max_tokens=40) for i in range(4)]
    runner = FakeRunner(num_blocks=30, block_size=4)
    with Engine(runner, max_running=4) as eng:
        got = run_concurrent(eng, [(prompt(i), params(i, 40)) for i in range(4)])
        assert eng.stats()["preemptions"] > 0
        assert [g[:3] for g in got] == expected
        assert_pool_whole(eng)


def test_chunked_prefill_same_output() -> None:
    expected = solo(3, n=100)
    runner = FakeRunner()
    with Engine(runner, max_batch_tokens=16) as eng:
        text, ids, fin, usage = eng.generate(prompt(3, 100), params(3))
    assert (text, ids, fin) == expected and usage.prompt_tokens == 100
    assert max(sum(b) for b in runner.batches) <= 16


def test_prefix_cache_hit_skips_prefill() -> None:
    runner = FakeRunner()
    with Engine(runner) as eng:
        p = prompt(5, 41)
        a = eng.generate(p, params(1))
        computed = eng.stats()["prompt_tokens_computed"]
        b = eng.generate(p, params(1))
        assert a[:3] == b[:3]
        assert a[3].cached_tokens == 0 and b[3].cached_tokens == 40
        assert eng.stats()["prompt_tokens_computed"] - computed == 1
        c = eng.generate(p[:30] + [1, 2, 3], params(1))
        assert c[3].cached_tokens == 28
        st = eng.stats()
        assert st["prefix_cache_hits"] == 68 and st["prefix_cache_queries"] == 41 + 41 + 33
        assert_pool_whole(eng)


def test_cancel_frees_blocks() -> None:
    runner = FakeRunner(delay=0.01)
    with Engine(runner) as eng:
        h = eng.submit(prompt(1), params(1, max_tokens=200))
        it = h.events(timeout=10)
        next(it)
        next(it)
        assert eng.kv.num_used_blocks > 0
        h.cancel()
        evs = list(it)
        assert evs[-1].finish_reason == "abort"
        assert eng.kv.num_used_blocks == 0 and eng.stats()["running"] == 0


def test_eos_stop_and_length() -> None:
    runner = FakeRunner(eos_every=50)
    with Engine(runner) as eng:
        fins = {eng.generate(prompt(i), params(i, 60))[2] for i in range(12)}
        assert fins == {"stop", "length"}
        text, ids, fin, usage = eng.generate(prompt(1), params(1, 5))
        assert fin == "length" and len(ids) == 5 and usage.completion_tokens == 5
        full = eng.generate(prompt(1), params(1, 40))[0]
        stop = full[10:13]
        t2, _, fin2, _ = eng.generate(prompt(1), params(1, 40, stop=[stop, "\x00never"]))
        assert fin2 == "stop" and t2 == full[: full.index(stop)]


def test_submit_errors() -> None:
    runner = FakeRunner(n_ctx=64, delay=0.05)
    eng = Engine(runner, max_queue=2)  # not started: everything stays queued
    with pytest.raises(ValueError):
        eng.submit(list(range(64)), params(1))
    with pytest.raises(ValueError):
        eng.submit([1, 2], SamplingParams(max_tokens=0))
    eng.submit([1, 2], params(1))
    eng.submit([1, 2], params(1))
    with pytest.raises(QueueFullError):
        eng.submit([1, 2], params(1))
    eng.shutdown()
    with pytest.raises(ValueError, match="KV cache"):
        Engine(FakeRunner(num_blocks=4, block_size=4)).submit(list(range(16)), params(1))
    # a sequence that outgrows the whole pool ends with "length"
    with Engine(FakeRunner(num_blocks=4, block_size=4)) as eng:
        _, ids, fin, _ = eng.generate(list(range(10)), params(1, 100))
        assert fin == "length" and len(ids) == 7
        assert_pool_whole(eng)
    # generation is clamped by the context
    with Engine(FakeRunner(n_ctx=32)) as eng:
        _, ids, fin, _ = eng.generate(prompt(1, 30), params(1, 100))
        assert fin == "length" and len(ids) == 2


def test_pool_whole_after_load() -> None:
    runner = FakeRunner(num_blocks=40, block_size=4, eos_every=13)
    with Engine(runner, max_running=6, max_queue=100, max_batch_tokens=32) as eng:
        jobs = [(prompt(i % 7, 10 + i % 30), params(i, 5 + i % 40, stop=["xy"] if i % 3 else []))
                for i in range(40)]
        handles = [eng.submit(p, sp) for p, sp in jobs]
        for h in handles[::5]:
            h.cancel()
        for h in handles:
            assert list(h.events(timeout=30))[-1].finish_reason in {"stop", "length", "abort"}
        assert_pool_whole(eng)
        st = eng.stats()
        assert st["finished"] == 40 and st["waiting"] == 0


def test_stop_filter_holds_back_partial_matches() -> None:
    f = _StopFilter(["</end>", "STOP"])
    assert f.feed("hello <") == ("hello ", False)
    assert f.feed("/e") == ("", False)
    assert f.feed("x") == ("</ex", False)
    assert f.feed("ST") == ("", False)
    assert f.feed("OPtail") == ("", True)
    g = _StopFilter(["ab"])
    assert g.feed("xa") == ("x", False)
    assert g.flush() == "a"


def test_detok_is_byte_safe() -> None:
    from edgerun.serving.engine import _Detok

    d = _Detok(FakeTokenizer())
    ids = list("é€x".encode())
    assert "".join(d.push(i) for i in ids) + d.flush() == "é€x"
    assert d.push(ids[0]) == ""
