"""Qwen2 decoder: the Llama layout plus Q/K/V biases and NEOX-style RoPE."""

from __future__ import annotations

from typing import Any

from edgerun.models.base import ModelArgs, Transformer


class Qwen2(Transformer):
    arch = "qwen2"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        return ModelArgs(**ModelArgs.common(md, cls.arch, vocab_size, rope_neox=True, qkv_bias=True))
