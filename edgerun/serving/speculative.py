"""Speculative decoding: propose k tokens cheaply, verify them in ONE batched target step.

Batch-1 CPU decode is bound by reading every weight once per token; the batched kernels read
each weight once for all rows of a step, so checking k proposed tokens costs about one step.
Two proposers:

- **prompt lookup** (`--lookup`): the continuation of the longest recent n-gram match of the
  sequence's tail in its prompt and output so far (free to compute; wins on "edit this code");
- **draft model** (`--draft-model`): a small model with the same vocabulary samples k tokens
  one by one. It keeps its own paged KV cache, in step with the target's: before proposing it
  catches up on every token it has not seen (the prompt at first, then the last accepted tokens
  and the target's correction), and after a rejection its length is rolled back to the last
  accepted token (the slots past it are simply overwritten later).

Verification is lossless. Greedy: a proposal is accepted while it equals the target's argmax
(the same `Sampler` call as plain decoding, on the same logits), so the output is token for token
the plain one. Temperature > 0: the standard rejection rule (Leviathan et al. 2023, Chen et al.
2023): accept x ~ q with probability min(1, p(x)/q(x)); on rejection draw from
norm(max(0, p - q)); after k acceptances draw a bonus token from p. For lookup q is a point mass
on the proposal. p and q are the distributions the sampler really draws from (repeat penalty,
top-k, top-p, min-p and temperature applied), so the output distribution is the target's.

k adapts per sequence: the per-token acceptance rate alpha (a moving average) predicts
E[tokens per step] = (1 - alpha^(k+1)) / (1 - alpha); a step with k proposals costs
(T(k+1) + k * T_draft) / T(1), where T(n) is the measured time of an n-row target step and T_draft
of one draft token (`StepCosts`; before any measurement: the draft's bytes over the target's, as
decode reads every weight once per token, and ROW_COST a row). The k that maximises tokens per
cost wins; 0 (no speculation this step) when nothing beats a plain step. Under continuous
batching a full batch already reads each weight once for many tokens, so the rows a step may
add for verification shrink as the batch grows (`max_batch_rows`).

A verification step has at most MAX_ROWS rows: up to there the native kernels run the
small-batch path, whose logits for a row are bit-identical to a one-row step's (measured: 0.0
difference for 2..16 rows, 0.44 at 17 rows, where the larger-batch kernels take over), which is
what makes greedy speculation token-for-token equal to plain decoding.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.serving.spec_flags import add_speculative_args  # noqa: F401  (re-exported)
from edgerun.serving.types import SpecStats
from edgerun.text.sampling import (
    Sampler,
    SamplingParams,
    apply_repeat_penalty,
    min_p_filter,
    softmax,
    top_k_filter,
    top_p_filter,
)

# one more row in a batched target step costs about this fraction of a one-row step before it is
# measured (issue 17: the 0.5B's 4-row step is ~1.2x its 1-row step -> ~0.07 a row)
ROW_COST = 0.07
# rows of one verification step (k + 1); see the module docstring
MAX_ROWS = 16
# acceptance estimate: evidence fades by this factor per verified token; a prior of 0.7
# (worth two tokens) keeps the first steps speculating
ALPHA_DECAY = 0.9
ALPHA_PRIOR = 0.7
# draft catch-up prefills run in chunks of this many tokens
DRAFT_CHUNK = 512


class SpeculativeError(ValueError):
    """A speculative-decoding option cannot be honoured (bad draft model, bad value)."""


@dataclass
class SpecConfig:
    """What to speculate with. `draft_model` and `lookup` are exclusive."""

    draft_model: str | None = None
    lookup: bool = False
    draft_max: int | None = None  # most tokens proposed per step (default: 8 draft, 16 lookup)
    adaptive: bool = True  # False: always propose draft_max tokens (tests, measurements)
    ngram_max: int = 4  # lookup: longest n-gram tried first
    ngram_min: int = 1
    max_batch_rows: int = 16  # serving: rows a step may use for verification in all
    draft_threads: int | None = None

    def __post_init__(self) -> None:
        if self.draft_model and self.lookup:
            raise SpeculativeError("--draft-model and --lookup are exclusive: pick one proposer")
        if self.draft_max is not None and not 1 <= self.draft_max <= MAX_ROWS - 1:
            raise SpeculativeError(f"--draft-max must be in 1..{MAX_ROWS - 1}, got {self.draft_max} "
                                   f"(a verification step of more than {MAX_ROWS} rows leaves the "
                                   "kernels whose results equal plain decoding)")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise SpeculativeError("lookup n-gram sizes need 1 <= min <= max")

    @property
    def enabled(self) -> bool:
        return bool(self.draft_model or self.lookup)

    @property
    def k_max(self) -> int:
        if self.draft_max is not None:
            return self.draft_max
        return 8 if self.draft_model else MAX_ROWS - 1


def config_from_args(args: argparse.Namespace) -> SpecConfig | None:
    """SpecConfig from `add_speculative_args` flags; None when speculation is off."""
    draft = getattr(args, "draft_model", None)
    lookup = bool(getattr(args, "lookup", False))
    k = getattr(args, "draft_max", None)
    if not draft and not lookup:
        if k is not None:
            raise SpeculativeError("--draft-max needs --draft-model or --lookup")
        return None
    return SpecConfig(draft_model=draft, lookup=lookup, draft_max=k)


# ----------------------------------------------------------------------------- distributions


def sampling_dist(params: SamplingParams, logits: np.ndarray, history: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The distribution `Sampler.sample` draws from, as (ids, probs) of its support.

    The same chain as the sampler (repeat penalty, top-k, top-p, min-p, temperature); greedy is a
    point mass on the argmax.
    """
    lg = apply_repeat_penalty(np.asarray(logits, dtype=np.float32), history, params.repeat_penalty,
                              params.repeat_last_n)
    if params.greedy:
        return np.array([int(np.argmax(lg))]), np.ones(1)
    ids = np.arange(len(lg))
    ids, lg = top_k_filter(ids, lg, params.top_k)
    ids, lg = top_p_filter(ids, lg, params.top_p)
    ids, lg = min_p_filter(ids, lg, params.min_p)
    return ids, softmax(lg.astype(np.float64) / params.temperature)


def _dense(dist: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
    out = np.zeros(n)
    out[dist[0]] = dist[1]
    return out


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Where to draw from after a rejection: norm(max(0, p - q)) (p itself if that is empty)."""
    r = np.maximum(p - q, 0.0)
    s = r.sum()
    return r / s if s > 0 else p


def accept_prob(p_x: float, q_x: float) -> float:
    """Probability of keeping a proposal x drawn from q: min(1, p(x) / q(x))."""
    return min(1.0, p_x / q_x) if q_x > 0 else 0.0


Draft = tuple[np.ndarray, np.ndarray] | None  # the proposal's distribution q; None: a point mass


def verify(logits: np.ndarray, proposal: Sequence[int], qs: Sequence[Draft] | None,
           history: Sequence[int], sampler: Sampler) -> tuple[list[int], int]:
    """Check proposed tokens against the target's logits of one batched step.

    logits (k+1, vocab): row i scores the position after history + proposal[:i]. Returns the
    tokens to append (the accepted proposals, then the target's correction or bonus token) and
    how many proposals were accepted.
    """
    params = sampler.params
    hist = list(history)
    out: list[int] = []
    k = len(proposal)
    assert logits.shape[0] == k + 1, "one logits row per proposal plus the bonus row"
    for i, x in enumerate(proposal):
        if params.greedy:
            t = sampler.sample(logits[i], hist)
            if t != x:
                return out + [t], i
        else:
            p = _dense(sampling_dist(params, logits[i], hist), logits.shape[1])
            qd = qs[i] if qs is not None else None
            if qd is None:
                q = np.zeros_like(p)
                q[x] = 1.0
            else:
                q = _dense(qd, logits.shape[1])
            if sampler.rng.random() >= accept_prob(float(p[x]), float(q[x])):
                r = residual(p, q)
                return out + [int(sampler.rng.choice(len(r), p=r))], i
        out.append(int(x))
        hist.append(int(x))
    return out + [sampler.sample(logits[k], hist)], k


# ----------------------------------------------------------------------------- adaptive k


def expected_tokens(alpha: float, k: int) -> float:
    """E[tokens per step] when each proposal is accepted with probability alpha, until the first
    rejection: 1 + alpha + ... + alpha^k."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def best_k(alpha: float, k_max: int, draft_cost: float | None = None, row_cost: float = ROW_COST,
           cost: Callable[[int], float] | None = None) -> int:
    """The k in 0..k_max with the most tokens per unit of step cost (0: a plain step is best).

    `cost(k)`: a step with k proposals over a plain step; by default 1 + k * (draft_cost + row_cost).
    """
    if cost is None:
        dc = draft_cost or 0.0

        def cost(k: int) -> float:
            return 1.0 + k * (dc + row_cost)

    best, best_rate = 0, 1.0
    for k in range(1, k_max + 1):
        rate = expected_tokens(alpha, k) / cost(k)
        if rate > best_rate * 1.02:  # a 2% margin: do not speculate for noise-level gains
            best, best_rate = k, rate
    return best


class StepCosts:
    """Measured step times: T(n) of an n-row target step and T_draft of one draft token, as
    moving averages; unmeasured row counts are interpolated (or guessed from ROW_COST)."""

    def __init__(self, draft_guess: float = 0.0) -> None:
        self.t = np.zeros(MAX_ROWS + 1)  # seconds by row count (0: not measured)
        self.draft_guess = draft_guess  # draft token / one-row step before measuring
        self.t_draft = 0.0

    def note_target(self, rows: int, seconds: float) -> None:
        if 1 <= rows <= MAX_ROWS and seconds > 0:
            old = self.t[rows]
            self.t[rows] = seconds if old == 0 else 0.8 * old + 0.2 * seconds

    def note_draft(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            per = seconds / tokens
            self.t_draft = per if self.t_draft == 0 else 0.8 * self.t_draft + 0.2 * per

    def rows(self, n: int) -> float:
        """T(n) / T(1)."""
        t1 = self.t[1]
        if t1 == 0:
            return 1.0 + ROW_COST * (n - 1)
        if self.t[n] > 0:
            return float(self.t[n] / t1)
        known = [i for i in range(2, MAX_ROWS + 1) if self.t[i] > 0]
        if not known:
            return 1.0 + ROW_COST * (n - 1)
        # per-row slope from the nearest measured row count
        m = min(known, key=lambda i: abs(i - n))
        slope = max((self.t[m] / t1 - 1.0) / (m - 1), 0.0)
        return 1.0 + slope * (n - 1)

    def step(self, k: int) -> float:
        """Cost of a step with k proposals (verification plus drafting) over a plain step."""
        d = self.t_draft / self.t[1] if self.t_draft > 0 and self.t[1] > 0 else self.draft_guess
        return self.rows(k + 1) + k * d


@dataclass
class SeqSpec:
    """One sequence's speculative state: acceptance estimate, counters, draft-cache length."""

    alpha: float = 0.7  # estimated probability that a proposed token is accepted
    proposed: int = 0
    accepted: int = 0
    steps: int = 0  # target steps that produced this sequence's tokens
    tokens: int = 0  # tokens those steps produced
    skipped: int = 0  # plain steps in a row chosen by the cost model (see `choose_k`)
    decisions: int = 0  # times `choose_k` ran for this sequence
    probe_every: int = 16  # plain steps before a one-token draft probe (doubles while useless)
    draft_len: int = 0  # tokens of this sequence in the draft model's KV cache
    draft_id: int = -1  # the sequence's id in the draft's block manager
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    _succ: float = 0.0
    _trials: float = 0.0

    def record(self, proposed: int, accepted: int, produced: int) -> None:
        """Count one verification step and update the acceptance estimate."""
        self.proposed += proposed
        self.accepted += accepted
        self.steps += 1
        self.tokens += produced
        if proposed:
            # per-token acceptance: `accepted` successes then (maybe) one failure, counted in
            # windows that forget old evidence per token (about the last 10 trials weigh)
            trials = accepted + (1 if accepted < proposed else 0)
            keep = ALPHA_DECAY ** trials
            self._succ = self._succ * keep + accepted
            self._trials = self._trials * keep + trials
            self.alpha = (self._succ + ALPHA_PRIOR * 2.0) / (self._trials + 2.0)

    def stats(self) -> SpecStats:
        return SpecStats(proposed=self.proposed, accepted=self.accepted, steps=self.steps,
                         tokens=self.tokens)


# ----------------------------------------------------------------------------- proposers


def lookup_propose(history: Sequence[int], k: int, ngram_max: int = 4, ngram_min: int = 1) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the longest n-gram
    (ngram_max down to ngram_min) ending the history; [] when there is no match."""
    n_hist = len(history)
    if k <= 0 or n_hist < 2:
        return []
    h = np.asarray(history, dtype=np.int64)
    # candidate ends: earlier positions holding the last token (not the last position itself)
    ends = np.nonzero(h[:-1] == h[-1])[0]
    if len(ends) == 0:
        return []
    for n in range(min(ngram_max, n_hist - 1), ngram_min - 1, -1):
        ok = ends[ends >= n - 1]
        for j in range(1, n):
            if len(ok) == 0:
                break
            ok = ok[h[ok - j] == h[n_hist - 1 - j]]
        if len(ok):
            e = int(ok[-1])  # most recent match
            return [int(t) for t in h[e + 1: e + 1 + k]]
    return []


def check_vocab(target: Any, draft: Any, target_name: str, draft_name: str) -> None:
    """Raise SpeculativeError unless two runners' models share the vocabulary: the same token
    strings under the same ids (GGUF `tokenizer.ggml.tokens`) and the same BOS/EOS."""
    ta, tb = target.tokenizer, draft.tokenizer
    va = target.gguf.metadata.get("tokenizer.ggml.tokens")
    vb = draft.gguf.metadata.get("tokenizer.ggml.tokens")
    if va is None or vb is None:
        raise SpeculativeError(f"cannot compare the vocabularies of {target_name} and {draft_name}: "
                               "a GGUF without tokenizer.ggml.tokens")
    if len(va) != len(vb) or ta.vocab_size != tb.vocab_size:
        raise SpeculativeError(f"draft model {draft_name} has a vocabulary of {len(vb)} tokens, "
                               f"{target_name} has {len(va)}: a draft needs the same vocabulary")
    for i, (x, y) in enumerate(zip(va, vb, strict=True)):
        if x != y:
            raise SpeculativeError(f"draft model {draft_name} has a different vocabulary from "
                                   f"{target_name} (token {i}: {y!r} vs {x!r})")
    if set(ta.eos_ids) != set(tb.eos_ids) or ta.bos_id != tb.bos_id:
        raise SpeculativeError(f"draft model {draft_name} has different BOS/EOS tokens from {target_name}")


@dataclass
class _DraftSeq:
    """What the draft's KV manager needs of a sequence (SeqLike)."""

    seq_id: int
    token_ids: list[int]
    num_computed_tokens: int = 0


class DraftModel:
    """A draft runner with its own paged KV cache, proposing for several sequences at once."""

    def __init__(self, runner: Any) -> None:
        from edgerun.serving.block_pool import KVCacheManager

        self.runner = runner
        self.kv = KVCacheManager(runner.num_blocks, runner.block_size, enable_prefix_caching=False)
        self._next_id = 0
        self._seqs: dict[int, _DraftSeq] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of weights read per draft token (all its matrices)."""
        return sum(int(t.data.nbytes) for t in self.runner.model.tensors())

    def attach(self, st: SeqSpec) -> None:
        """Give a sequence a slot in the draft's KV manager (no blocks yet)."""
        st.draft_id = self._next_id
        self._next_id += 1
        st.draft_len = 0
        self._seqs[st.draft_id] = _DraftSeq(st.draft_id, [])

    def release(self, st: SeqSpec) -> None:
        """Free a finished sequence's draft blocks."""
        if st.draft_id in self._seqs:
            self.kv.free(self._seqs.pop(st.draft_id))
        st.draft_id, st.draft_len = -1, 0

    def propose(self, items: list[tuple[SeqSpec, list[int], int, SamplingParams]]
                ) -> list[tuple[list[int], list[Draft]]]:
        """For each (state, history, k, params): k draft tokens and their distributions q.

        Every draft step runs all sequences that still need a token in one batched forward.
        A sequence whose draft KV cannot be allocated gets no proposals.
        """
        from edgerun.runtime.runner import SeqInput

        r = self.runner
        res: list[tuple[list[int], list[Draft]]] = [([], []) for _ in items]
        live = []
        for j, (st, hist, k, _) in enumerate(items):
            ds = self._seqs[st.draft_id]
            if st.draft_len > len(hist):
                st.draft_len = len(hist)
            ds.num_computed_tokens = st.draft_len
            ds.token_ids = hist
            need = len(hist) - st.draft_len + k - 1
            if k <= 0 or len(hist) + k > r.n_ctx or self.kv.allocate_slots(ds, need) is None:
                continue
            # catch up long gaps (the prompt) chunk by chunk, all but the last chunk here
            while len(hist) - st.draft_len > DRAFT_CHUNK:
                part = np.asarray(hist[st.draft_len: st.draft_len + DRAFT_CHUNK], np.int32)
                r.forward([SeqInput(part, st.draft_len, self.kv.block_table(st.draft_id))])
                st.draft_len += DRAFT_CHUNK
            live.append(j)
        feeds = {j: list(items[j][1][items[j][0].draft_len:]) for j in live}
        step = 0
        while live:
            inputs = [SeqInput(np.asarray(feeds[j], np.int32), items[j][0].draft_len,
                               self.kv.block_table(items[j][0].draft_id)) for j in live]
            logits = r.forward(inputs)
            nxt = []
            for j, lg in zip(live, logits, strict=True):
                st, hist, k, params = items[j]
                st.draft_len += len(feeds[j])
                toks, qs = res[j]
                ctx = hist + toks
                if params.greedy:
                    t = Sampler(params).sample(lg, ctx)
                    qs.append(None)
                else:
                    ids, pr = sampling_dist(params, lg, ctx)
                    t = int(ids[st.rng.choice(len(ids), p=pr)])
                    qs.append((ids, pr))
                toks.append(t)
                if len(toks) < k:
                    feeds[j] = [t]
                    nxt.append(j)
            live = nxt
            step += 1
        return res

    def rollback(self, st: SeqSpec, valid: int) -> None:
        """Forget draft KV past the first `valid` tokens (rejected proposals)."""
        st.draft_len = min(st.draft_len, valid)


def load_draft(spec: str, target: Any, n_threads: int | None = None, backend: str = "auto",
               batch_tiles: bool = False) -> DraftModel:
    """Load a draft model for `target` (a Runner): same vocabulary, same context and KV blocks."""
    from edgerun.catalog import ModelError, resolve_model
    from edgerun.models.base import ModelLoadError
    from edgerun.quant.gguf_file import GGUFError
    from edgerun.runtime.runner import Runner

    try:
        path = resolve_model(spec)
    except ModelError as e:
        raise SpeculativeError(f"draft model: {e}") from None
    if Path(path).resolve() == Path(target.path).resolve():
        raise SpeculativeError("the draft model is the model itself: use a smaller one or --lookup")
    try:
        r = Runner(path, n_ctx=target.n_ctx, n_threads=n_threads or target.n_threads,
                   num_blocks=target.num_blocks, block_size=target.block_size, backend=backend,
                   batch_tiles=batch_tiles)
    except (GGUFError, ModelLoadError, ValueError) as e:
        raise SpeculativeError(f"cannot load draft model {path}: {e}") from None
    check_vocab(target, r, Path(target.path).name, Path(path).name)
    return DraftModel(r)


def speculator_from_args(args: argparse.Namespace, runner: Any, batch_tiles: bool = False
                         ) -> Speculator | None:
    """The Speculator the `add_speculative_args` flags ask for (None: off); SpeculativeError
    (a ValueError) names the bad flag or file."""
    cfg = config_from_args(args)
    if cfg is None:
        return None
    draft = None
    if cfg.draft_model:
        draft = load_draft(cfg.draft_model, runner, backend=getattr(args, "backend", "auto") or "auto",
                           batch_tiles=batch_tiles)
    return Speculator(cfg, runner, draft)


def _target_bytes(runner: Any) -> int:
    try:
        return sum(int(t.data.nbytes) for t in runner.model.tensors())
    except AttributeError:
        return int(os.path.getsize(runner.path))


class Speculator:
    """The proposer and the k policy shared by `generate` (one sequence) and the engine."""

    def __init__(self, config: SpecConfig, target: Any, draft: DraftModel | None = None) -> None:
        if config.draft_model and draft is None:
            draft = load_draft(config.draft_model, target)
        self.config = config
        self.draft = draft
        # decode reads every weight once per token: the draft's step costs its bytes over ours
        self.draft_cost = draft.nbytes / max(_target_bytes(target), 1) if draft is not None else 0.0
        self.costs = StepCosts(self.draft_cost)
        self.enabled = True  # the chat app's toggle; off: plain steps, same output

    @property
    def mode(self) -> str:
        return "draft" if self.draft is not None else "lookup"

    def new_state(self, seed: int | None = None) -> SeqSpec:
        """Per-sequence state (the draft's rng is seeded from the request's seed)."""
        st = SeqSpec(rng=np.random.default_rng(None if seed is None else seed + 0x5EC))
        if self.draft is not None:
            self.draft.attach(st)
        return st

    def release(self, st: SeqSpec) -> None:
        if self.draft is not None:
            self.draft.release(st)

    def batch_limit(self, other_rows: int, n_spec: int) -> int:
        """Most proposals per sequence when `n_spec` decoding sequences may speculate in a step
        that computes `other_rows` rows besides their own: all rows stay within max_batch_rows
        (a full batch already shares each weight read among many tokens, and MAX_ROWS keeps
        the kernels whose results equal plain decoding)."""
        rows = min(self.config.max_batch_rows, MAX_ROWS)
        return max(0, (rows - other_rows - n_spec) // max(n_spec, 1))

    def choose_k(self, st: SeqSpec, limit: int, batch: int = 1) -> int:
        """Tokens to propose this step for one sequence of a `batch`-sequence step, at most
        `limit` (see `batch_limit`, max_tokens and the context)."""
        if not self.enabled:
            return 0
        cfg = self.config
        k_max = min(cfg.k_max, limit)
        if k_max <= 0:
            return 0
        if not cfg.adaptive:
            return k_max
        st.decisions += 1
        if batch == 1 and (self.costs.t[1] == 0 or st.decisions % 64 == 0):
            return 0  # a plain step now and then measures T(1), the unit of every cost
        k = best_k(st.alpha, k_max, cost=self.costs.step)
        if k > 0:
            st.probe_every = 16
        elif self.draft is not None:
            # re-measure now and then, so a sequence whose text gets easier is not stuck at 0;
            # a probe costs the draft's catch-up, so probes that change nothing grow rarer
            st.skipped += 1
            if st.skipped >= st.probe_every:
                st.skipped, k = 0, 1
                st.probe_every = min(2 * st.probe_every, 512)
        return k

    def propose(self, items: list[tuple[SeqSpec, list[int], int, SamplingParams]]
                ) -> list[tuple[list[int], list[Draft] | None]]:
        """Proposals for each (state, history, k, params)."""
        if self.draft is not None:
            # a catch-up over a whole prompt is a prefill, not the per-token cost of drafting
            catchup = max((len(h) - st.draft_len for st, h, _, _ in items), default=0)
            t0 = time.perf_counter()
            out = self.draft.propose(items)
            if catchup <= 4 and len(items) == 1:
                self.costs.note_draft(sum(len(p) for p, _ in out), time.perf_counter() - t0)
            return out  # type: ignore[return-value]
        cfg = self.config
        return [(lookup_propose(h, k, cfg.ngram_max, cfg.ngram_min), None) for _, h, k, _ in items]

    def cancel_proposal(self, st: SeqSpec, n_tokens: int) -> None:
        """Proposals made but not verified (no KV room): forget them in the draft's cache."""
        if self.draft is not None:
            self.draft.rollback(st, n_tokens)

    def after_verify(self, st: SeqSpec, n_before: int, proposed: int, accepted: int, produced: int) -> None:
        """Record a verification; roll the draft's cache back to the accepted tokens."""
        st.record(proposed, accepted, produced)
        if self.draft is not None:
            self.draft.rollback(st, n_before + accepted)


def spec_step_tokens(runner: Any, spec: Speculator, prompt: Sequence[int], params: SamplingParams,
                     table: np.ndarray, first_logits: np.ndarray, max_new: int,
                     state: SeqSpec | None = None) -> Any:
    """Token generator of one sequence with speculation (generate.step_tokens' decode loop).

    The prompt is already in the target's cache and `first_logits` scores its last position.
    Yields token ids; `state` (a fresh one when None) carries the statistics.
    """
    from edgerun.runtime.runner import SeqInput

    st = state or spec.new_state(params.seed)
    sampler = Sampler(params)
    eos = runner.tokenizer.eos_ids
    history = list(prompt)
    try:
        tok = sampler.sample(first_logits, history)
        st.steps, st.tokens = 1, 1
        produced = 0
        while True:
            yield tok
            history.append(tok)
            produced += 1
            if produced >= max_new or (tok in eos and not params.ignore_eos):
                return
            # proposals may not run past max_tokens (the bonus token is the +1) or the context
            limit = min(max_new - produced - 1, runner.n_ctx - len(history) - 1)
            k = spec.choose_k(st, limit)
            prop: list[int] = []
            qs = None
            if k > 0:
                ((prop, qs),) = spec.propose([(st, history, k, params)])
            pos = len(history) - 1
            feed = np.asarray([tok] + prop, np.int32)
            t0 = time.perf_counter()
            (lg,) = runner.forward([SeqInput(feed, pos, table, want_all_logits=True)])
            lg = np.asarray(lg).reshape(len(feed), -1)
            new, acc = verify(lg, prop, qs, history, sampler)
            spec.costs.note_target(len(feed), time.perf_counter() - t0)
            spec.after_verify(st, len(history), len(prop), acc, len(new))
            for t in new[:-1]:
                yield t
                history.append(t)
                produced += 1
                if produced >= max_new or (t in eos and not params.ignore_eos):
                    return
            tok = new[-1]
    finally:
        spec.release(st)
