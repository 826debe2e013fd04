"""Continuous-batching scheduler.

Policy (vLLM v1 style, no prefill/decode branches): every sequence wants
`len(token_ids) - num_computed_tokens` tokens this step — a whole prompt, a chunk of one,
or the single token sampled last step. Running sequences are served first, smallest want
first (so decodes are never starved by a long prefill), then waiting ones are admitted in
arrival order while the per-step token budget, the running cap and the KV pool allow.
Prompts longer than the budget are prefilled in chunks over several steps. When the pool
runs dry the newest running sequence is preempted: its blocks are freed and it is put back
at the head of the queue to be recomputed (its prefix will usually still be cached).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edgerun.serving.block_pool import KVCacheManager

_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """A request's token state as the scheduler and KV manager see it."""

    prompt_ids: list[int]
    max_tokens: int
    seq_id: int = field(default_factory=lambda: next(_ids))
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prompt tokens hit in the prefix cache at first admission
    num_preemptions: int = 0
    arrival: float = field(default_factory=time.perf_counter)
    data: Any = None  # owner's per-request state (the engine's request)

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids) :]


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int


@dataclass
class SchedulerOutput:
    """One step's plan: which sequences compute how many tokens."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    too_large: list[Sequence] = field(default_factory=list)  # cannot fit even alone: finish them

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    """Decides each step's batch under a token budget, a running cap and the KV pool."""

    def __init__(self, kv: KVCacheManager, max_running: int = 8, max_batch_tokens: int = 512) -> None:
        if max_running <= 0 or max_batch_tokens <= 0:
            raise ValueError("max_running and max_batch_tokens must be > 0")
        self.kv = kv
        self.max_running = max_running
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order; the last is the newest
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished or cancelled) wherever it is and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.kv.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> SchedulerOutput:
        """Plan one step. Each scheduled sequence gets blocks for its new tokens."""
        out = SchedulerOutput()
        budget = self.max_batch_tokens
        planned: dict[int, ScheduledSeq] = {}

        for seq in sorted(self.running, key=lambda s: s.num_tokens - s.num_computed_tokens):
            if budget <= 0:
                break
            if seq not in self.running:  # preempted earlier in this loop
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while True:
                if self.kv.allocate_slots(seq, n) is not None:
                    planned[seq.seq_id] = ScheduledSeq(seq, n)
                    budget -= n
                    break
                victim = self.running[-1]
                if victim is seq and len(self.running) == 1:
                    self.running.remove(seq)
                    self.kv.free(seq)
                    out.too_large.append(seq)
                    break
                undone = planned.pop(victim.seq_id, None)
                if undone is not None:
                    budget += undone.num_new_tokens
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break

        while self.waiting and budget > 0 and len(self.running) < self.max_running and not out.preempted:
            seq = self.waiting[0]
            hits, n_hit = ([], 0)
            if seq.num_computed_tokens == 0:
                hits, n_hit = self.kv.get_computed_blocks(seq)
            n = min(seq.num_tokens - seq.num_computed_tokens - n_hit, budget)
            if self.kv.allocate_slots(seq, n, hits) is None:
                if not self.running and not planned:
                    self.waiting.popleft()
                    self.kv.free(seq)
                    out.too_large.append(seq)
                    continue
                break
            self.waiting.popleft()
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = min(n_hit, seq.num_prompt_tokens)
                self.kv.note_prefix_lookup(seq.num_prompt_tokens, seq.num_cached_tokens)
            seq.num_computed_tokens += n_hit
            self.running.append(seq)
            planned[seq.seq_id] = ScheduledSeq(seq, n)
            budget -= n

        out.scheduled = list(planned.values())
        return out
