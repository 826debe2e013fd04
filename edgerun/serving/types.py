"""Dataclasses that cross the serving seam (engine <-> server, TUI, CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    queued_s: float = 0.0  # submit -> first scheduled
    ttft_s: float = 0.0  # submit -> first token
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    total_s: float = 0.0


@dataclass
class SpecStats:
    """Speculative decoding of one request so far (cumulative)."""

    proposed: int = 0  # tokens proposed (draft model or prompt lookup)
    accepted: int = 0  # of which the target accepted
    steps: int = 0  # target steps that produced tokens for this request
    tokens: int = 0  # tokens those steps produced

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0


@dataclass
class StreamEvent:
    """One step of a request's output stream.

    `text` is the new text since the previous event (may be empty while a multi-byte
    character or a possible stop string is held back). The last event has `finish_reason`
    set: "stop" (EOS or a stop string), "length" (max_tokens or context full), "abort"
    (cancelled) or "error" (with `error`).
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    error: str | None = None
    spec: SpecStats | None = None  # set when the request decodes speculatively
