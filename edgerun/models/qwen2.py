"""Qwen2 decoder: the Llama layout plus Q/K/V biases and NEOX-style RoPE.

Qwen2-MoE adds routed experts (`ffn_*_exps`, width `expert_feed_forward_length`, top-k weights
not renormalised) and a shared expert every token takes, gated by sigmoid(h . `ffn_gate_inp_shexp`).
"""

from __future__ import annotations

from typing import Any

from edgerun.models.base import ModelArgs, Transformer, _md


class Qwen2(Transformer):
    arch = "qwen2"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        return ModelArgs(**ModelArgs.common(md, cls.arch, vocab_size, rope_neox=True, qkv_bias=True))


class Qwen2MoE(Transformer):
    arch = "qwen2moe"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        a = ModelArgs.common(md, cls.arch, vocab_size, rope_neox=True, qkv_bias=True)
        a["expert_ffn_dim"] = _md(md, cls.arch + ".expert_feed_forward_length", int, a["ffn_dim"])
        a["shared_expert_ffn_dim"] = _md(md, cls.arch + ".expert_shared_feed_forward_length", int,
                                         a["ffn_dim"])
        a["moe_norm_topk"] = False
        return ModelArgs(**a)
