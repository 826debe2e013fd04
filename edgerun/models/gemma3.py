"""Gemma 3 decoder.

Differences from Llama: embeddings scaled by sqrt(dim); QK-norm; a norm after attention
and after the FFN as well as before; GELU(tanh) gating; tied output head; five
sliding-window layers (RoPE base 10k) for each global layer (RoPE base from metadata).
GGUF norm weights already include Gemma's +1 offset (the converter adds it).
"""

from __future__ import annotations

import math
from typing import Any

from edgerun.models.base import ModelArgs, Transformer, _md

SWA_PATTERN = 6  # every 6th layer is global
SWA_ROPE_BASE = 10000.0
GEMMA3_27B_LAYERS = 62


class Gemma3(Transformer):
    arch = "gemma3"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        a = ModelArgs.common(md, cls.arch, vocab_size, rope_neox=True, qk_norm=True, post_norms=True,
                             activation="gelu_tanh")
        n = a["n_layers"]
        window = _md(md, "gemma3.attention.sliding_window", int, 4096)
        is_global = [(i + 1) % SWA_PATTERN == 0 for i in range(n)]
        a["windows"] = [0 if g else window for g in is_global]
        local_base = _md(md, "gemma3.rope.local_freq_base", float, SWA_ROPE_BASE)
        scale = _md(md, "gemma3.rope.scaling.factor", float, 1.0)
        # Linear RoPE scaling (larger Gemma 3) applies to the global layers only.
        a["rope_bases"] = [a["rope_base"] if g else local_base for g in is_global]
        a["rope_pos_scales"] = [1.0 / scale if g else 1.0 for g in is_global]
        a["embed_scale"] = math.sqrt(a["dim"])
        # Gemma 3 27B (62 layers) was trained with query_pre_attn_scalar = dim / n_heads rather than
        # head_dim; llama.cpp keys that on the model size, and so do we (the GGUF carries no key)
        if n == GEMMA3_27B_LAYERS:
            a["attn_scale"] = 1.0 / math.sqrt(a["dim"] / a["n_heads"])
        return ModelArgs(**a)
