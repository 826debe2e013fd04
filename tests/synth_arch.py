"""Synthetic GGUF files with the real tensor layout and metadata of each architecture.

Random weights, a small SentencePiece-style vocabulary and every metadata key llama.cpp reads for
the family, so that llama-cpp-python loads the same file and the two can be compared position by
position (tests/test_architectures.py). Shapes follow the real conventions: GGUF `ne` order, fused
tensors where the family fuses them (phi3's `attn_qkv` and `ffn_up`), 3-D expert tensors for MoE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from edgerun.quant.traits import quantize


@dataclass
class ArchSpec:
    arch: str
    n_layers: int = 2
    dim: int = 128
    ffn: int = 192
    n_heads: int = 4
    n_kv: int = 2
    head_dim: int = 32
    vocab: int = 320
    ctx: int = 512
    rope_base: float = 10000.0
    n_expert: int = 0
    n_expert_used: int = 0
    expert_ffn: int = 0
    shared_expert_ffn: int = 0
    rope_freqs: bool = False  # llama 3.1 style per-dimension frequency factors
    sliding_window: int = 0
    extra_kv: dict[str, object] = field(default_factory=dict)


def write_arch_model(path: Path, s: ArchSpec, qtype: int = T.Q8_0, seed: int = 0,
                     scale: float = 0.06) -> Path:
    """Write `s` as a GGUF file llama.cpp and edgerun both load; returns the path."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), s.arch)
    p = s.arch + "."
    w.add_uint32(p + "block_count", s.n_layers)
    w.add_uint32(p + "context_length", s.ctx)
    w.add_uint32(p + "embedding_length", s.dim)
    w.add_uint32(p + "feed_forward_length", s.ffn)
    w.add_uint32(p + "attention.head_count", s.n_heads)
    w.add_uint32(p + "attention.head_count_kv", s.n_kv)
    w.add_uint32(p + "attention.key_length", s.head_dim)
    w.add_uint32(p + "attention.value_length", s.head_dim)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(p + "rope.freq_base", s.rope_base)
    w.add_uint32(p + "rope.dimension_count", s.head_dim)
    if s.n_expert:
        w.add_uint32(p + "expert_count", s.n_expert)
        w.add_uint32(p + "expert_used_count", s.n_expert_used)
        if s.expert_ffn:
            w.add_uint32(p + "expert_feed_forward_length", s.expert_ffn)
        if s.shared_expert_ffn:
            w.add_uint32(p + "expert_shared_feed_forward_length", s.shared_expert_ffn)
    if s.sliding_window:
        w.add_uint32(p + "attention.sliding_window", s.sliding_window)
    for k, v in s.extra_kv.items():
        if isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        else:
            w.add_string(k, str(v))
    # SentencePiece-style vocabulary: unk, bos, eos, 256 byte tokens, filler pieces
    n_fill = s.vocab - 259
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"\u2581t{i}" for i in range(n_fill)]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(n_fill)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * n_fill)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def mat(name: str, *shape: int, sc: float = scale, qt: int = qtype) -> None:
        """shape in numpy order (..., N, K): K is the row length (GGUF ne0)."""
        x = (rng.standard_normal(shape) * sc).astype(np.float32)
        if qt == T.F32:
            w.add_tensor(name, x)
            return
        data = quantize(x.reshape(-1, shape[-1]), qt)
        w.add_tensor(name, data.reshape(*shape[:-1], data.shape[-1]), raw_dtype=T(qt))

    def vec(name: str, n: int, base: float = 1.0) -> None:
        w.add_tensor(name, (base + 0.1 * rng.standard_normal(n)).astype(np.float32))

    qd, kvd = s.n_heads * s.head_dim, s.n_kv * s.head_dim
    mat("token_embd.weight", s.vocab, s.dim, sc=0.5)
    vec("output_norm.weight", s.dim)
    if s.arch != "gemma3":  # gemma ties the output head to the embeddings
        mat("output.weight", s.vocab, s.dim)
    if s.rope_freqs:
        # factors >= 1 stretch the low frequencies, as Llama 3.1's do
        f = np.linspace(1.0, 8.0, s.head_dim // 2).astype(np.float32)
        w.add_tensor("rope_freqs.weight", f)
    for i in range(s.n_layers):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", s.dim)
        if s.arch == "phi3":
            mat(b + "attn_qkv.weight", qd + 2 * kvd, s.dim)
        else:
            mat(b + "attn_q.weight", qd, s.dim)
            mat(b + "attn_k.weight", kvd, s.dim)
            mat(b + "attn_v.weight", kvd, s.dim)
        mat(b + "attn_output.weight", s.dim, qd)
        if s.arch in ("qwen3", "qwen3moe", "gemma3"):
            vec(b + "attn_q_norm.weight", s.head_dim)
            vec(b + "attn_k_norm.weight", s.head_dim)
        if s.arch == "gemma3":
            vec(b + "post_attention_norm.weight", s.dim)
            vec(b + "post_ffw_norm.weight", s.dim)
        vec(b + "ffn_norm.weight", s.dim)
        if s.n_expert:
            eff = s.expert_ffn or s.ffn
            mat(b + "ffn_gate_inp.weight", s.n_expert, s.dim, qt=T.F32, sc=0.5)
            mat(b + "ffn_gate_exps.weight", s.n_expert, eff, s.dim)
            mat(b + "ffn_up_exps.weight", s.n_expert, eff, s.dim)
            mat(b + "ffn_down_exps.weight", s.n_expert, s.dim, eff)
            if s.shared_expert_ffn:
                sf = s.shared_expert_ffn
                w.add_tensor(b + "ffn_gate_inp_shexp.weight",
                             (0.5 * rng.standard_normal(s.dim)).astype(np.float32))
                mat(b + "ffn_gate_shexp.weight", sf, s.dim)
                mat(b + "ffn_up_shexp.weight", sf, s.dim)
                mat(b + "ffn_down_shexp.weight", s.dim, sf)
        elif s.arch == "phi3":
            mat(b + "ffn_up.weight", 2 * s.ffn, s.dim)
            mat(b + "ffn_down.weight", s.dim, s.ffn)
        else:
            mat(b + "ffn_gate.weight", s.ffn, s.dim)
            mat(b + "ffn_up.weight", s.ffn, s.dim)
            mat(b + "ffn_down.weight", s.dim, s.ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
