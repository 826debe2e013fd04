"""Sampling: small composable logit processors and a seeded sampler.

Order follows llama.cpp's default chain: repetition penalty, top-k, top-p, min-p,
temperature, then a draw. Temperature <= 0 means greedy (argmax of the raw logits after
the penalty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_TEMPERATURE = 1e-4  # below this, exp(logit / T) leaves float64: use 0 for greedy
MAX_TEMPERATURE = 100.0
MIN_PENALTY, MAX_PENALTY = 1e-3, 1e3


def _finite(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
        and bool(np.isfinite(x))


def _int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (its name is the message's first word).

        Bounds keep every later step finite: a subnormal temperature or a tiny penalty would
        otherwise turn logits into inf/NaN inside a batched step.
        """
        if not _finite(self.temperature) or self.temperature < 0 or self.temperature > MAX_TEMPERATURE:
            raise ValueError(f"temperature must be a finite number in [0, {MAX_TEMPERATURE:g}]")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
        if not _int(self.top_k) or self.top_k < 0:
            raise ValueError("top_k must be an integer >= 0 (0 disables it)")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not _finite(self.min_p) or not 0 <= self.min_p < 1:
            raise ValueError("min_p must be in [0, 1)")
        if not _finite(self.repeat_penalty) or not MIN_PENALTY <= self.repeat_penalty <= MAX_PENALTY:
            raise ValueError(f"repeat_penalty must be a finite number in [{MIN_PENALTY:g}, {MAX_PENALTY:g}]")
        if not _int(self.repeat_last_n) or self.repeat_last_n < -1:
            raise ValueError("repeat_last_n must be an integer >= -1 (0 or -1: the whole history)")
        if self.seed is not None and (not _int(self.seed) or not 0 <= self.seed < 2**64):
            raise ValueError("seed must be an integer in [0, 2^64)")
        if not _int(self.max_tokens) or self.max_tokens <= 0:
            raise ValueError("max_tokens must be an integer > 0")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a list of strings")
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_repeat_penalty(logits: np.ndarray, history: Sequence[int], penalty: float,
                         last_n: int) -> np.ndarray:
    """llama.cpp-style penalty: divide positive logits, multiply negative ones."""
    if penalty == 1.0 or not history:
        return logits
    ids = np.unique(np.asarray(history[-last_n:] if last_n > 0 else history, dtype=np.int64))
    out = logits.copy()
    v = out[ids]
    out[ids] = np.where(v > 0, v / penalty, v * penalty)
    return out


def top_k_filter(ids: np.ndarray, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k largest, sorted descending."""
    if 0 < k < len(logits):
        part = np.argpartition(-logits, k - 1)[:k]
        ids, logits = ids[part], logits[part]
    order = np.argsort(-logits, kind="stable")
    return ids[order], logits[order]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def top_p_filter(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Smallest prefix (sorted descending) whose probability mass reaches p."""
    if p >= 1.0:
        return ids, logits
    cum = np.cumsum(softmax(logits))
    keep = int(np.searchsorted(cum, p) + 1)
    return ids[:keep], logits[:keep]


def min_p_filter(ids: np.ndarray, logits: np.ndarray, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop tokens whose probability is below min_p times the top token's."""
    if min_p <= 0:
        return ids, logits
    keep = logits >= logits[0] + np.log(min_p)
    keep[0] = True
    return ids[keep], logits[keep]


class Sampler:
    """Draws the next token; seeded per request so a seed reproduces its output."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        top = logits.max()
        if not np.isfinite(top):  # NaN or +inf anywhere (NaN propagates through max), or all -inf
            raise ValueError(f"the model produced non-finite logits (max {top})")
        logits = apply_repeat_penalty(logits, history, p.repeat_penalty, p.repeat_last_n)
        if p.greedy:
            return int(np.argmax(logits))
        ids = np.arange(len(logits))
        ids, lg = top_k_filter(ids, logits, p.top_k)
        ids, lg = top_p_filter(ids, lg, p.top_p)
        ids, lg = min_p_filter(ids, lg, p.min_p)
        # lg is sorted descending: shift before dividing so a small temperature cannot overflow
        probs = softmax((lg.astype(np.float64) - lg[0]) / p.temperature)
        return int(ids[self.rng.choice(len(ids), p=probs)])
