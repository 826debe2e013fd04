"""Qwen3 and Qwen3-MoE decoders: the Qwen2 layout without Q/K/V biases, with QK-norm
(an RMS norm over each head's query and key before RoPE) and NEOX-style RoPE.

Qwen3-MoE replaces every FFN with routed experts (`ffn_gate_inp` router, `ffn_*_exps` 3-D
tensors of width `expert_feed_forward_length`): softmax over all experts, the top
`expert_used_count` taken, their weights renormalised (as llama.cpp does for this family).
"""

from __future__ import annotations

from typing import Any

from edgerun.models.base import ModelArgs, Transformer, _md


class Qwen3(Transformer):
    arch = "qwen3"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        return ModelArgs(**ModelArgs.common(md, cls.arch, vocab_size, rope_neox=True, qk_norm=True))


class Qwen3MoE(Qwen3):
    arch = "qwen3moe"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        a = ModelArgs.common(md, cls.arch, vocab_size, rope_neox=True, qk_norm=True)
        a["expert_ffn_dim"] = _md(md, cls.arch + ".expert_feed_forward_length", int, a["ffn_dim"])
        return ModelArgs(**a)
