"""Phi-3 decoder: the Llama block with fused tensors and NEOX-style RoPE.

`attn_qkv` holds the Q, K and V projections one after another and `ffn_up` holds the gate
and the up projection (SwiGLU: silu of the first half times the second); both are split into
row views at load, so the kernels see ordinary matrices. Phi-3's LongRoPE (the
`rope_factors_long/short` tensors of the 128k variants) is refused, not run as plain RoPE.
"""

from __future__ import annotations

from typing import Any

from edgerun.backends.base import QTensor
from edgerun.models.base import MoE, ModelArgs, ModelLoadError, Transformer, _md


class Phi3(Transformer):
    arch = "phi3"

    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        a = ModelArgs.common(md, cls.arch, vocab_size, rope_neox=True)
        n_rot = _md(md, "phi3.rope.dimension_count", int, a["head_dim"])
        if n_rot != a["head_dim"]:
            raise ModelLoadError(f"partial RoPE ({n_rot} of {a['head_dim']} dimensions) is not supported")
        window = _md(md, "phi3.attention.sliding_window", int, 0) if "phi3.attention.sliding_window" in md else 0
        if window:
            a["windows"] = [window] * a["n_layers"]
        return ModelArgs(**a)

    def __init__(self, gf: Any, backend: Any, vocab_size: int) -> None:
        for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            if name in gf.tensors:
                raise ModelLoadError(f"Phi-3 LongRoPE ({name}) is not supported yet")
        super().__init__(gf, backend, vocab_size)

    def load_attention(self, i: int) -> tuple[QTensor, QTensor, QTensor, QTensor]:
        a, p = self.args, f"blk.{i}."
        qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        wq, wk, wv = self.row_slices(p + "attn_qkv.weight", a.dim, [qd, kvd, kvd])
        return wq, wk, wv, self.qtensor(p + "attn_output.weight", qd, a.dim)

    def load_ffn(self, i: int) -> tuple[QTensor | None, QTensor | None, QTensor | None, MoE | None]:
        a, p = self.args, f"blk.{i}."
        gate, up = self.row_slices(p + "ffn_up.weight", a.dim, [a.ffn_dim, a.ffn_dim])
        return gate, up, self.qtensor(p + "ffn_down.weight", a.ffn_dim, a.dim), None
