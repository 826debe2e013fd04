"""Llama (and Mistral-style) decoder: RMSNorm, SwiGLU FFN, RoPE on adjacent pairs.

llama.cpp's converter permutes Q/K rows so the original (non-NEOX) rotation applies.
"""

from __future__ import annotations

from typing import Any

from edgerun.models.base import ModelArgs, ModelLoadError, Transformer, _md


class Llama(Transformer):
    arch = "llama"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        a = ModelArgs.common(md, cls.arch, vocab_size, rope_neox=False)
        n_rot = _md(md, "llama.rope.dimension_count", int, a["head_dim"])
        if n_rot != a["head_dim"]:
            raise ModelLoadError(f"partial RoPE ({n_rot} of {a['head_dim']}) is not supported")
        return ModelArgs(**a)


class Mistral(Llama):
    arch = "mistral"
