#!/usr/bin/env python3
"""GPU benchmark for a machine with an NVIDIA GPU and no network (see ../shared/GPU.md).

Writes synthetic GGUF files of real shapes (random blocks with sane scales; decode speed does not
depend on the values), checks the hybrid and GPU runners against the CPU backend, then times
prefill and decode of edgerun cpu / hybrid / gpu and of llama.cpp built with CUDA (``llama-bench``
with ``-ngl 99 -ot "ffn_.*=CPU"`` and ``-ngl 99``) in the same run, and prints one table with the
ratios and the CPU FFN phase's achieved bandwidth over the measured CPU read bandwidth.

    python scripts/bench_gpu.py --llama-bench /path/to/llama-bench [--shapes qwen1.5b,llama8b,70b]

The synthetic-model writer (:func:`write_synthetic_gguf`) is also used by the tests.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Shape:
    """Transformer geometry of a synthetic model."""

    name: str
    arch: str
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    qkv_bias: bool = False
    tied: bool = False
    rope_base: float = 10000.0
    ctx: int = 4096


SHAPES: dict[str, Shape] = {
    "qwen1.5b": Shape("Qwen2.5-1.5B", "qwen2", 28, 1536, 8960, 12, 2, 151936, qkv_bias=True, tied=True,
                      rope_base=1e6, ctx=32768),
    "llama8b": Shape("Llama-3-8B", "llama", 32, 4096, 14336, 32, 8, 128256, rope_base=5e5, ctx=8192),
    "70b": Shape("Llama-3-70B", "llama", 80, 8192, 28672, 64, 8, 128256, rope_base=5e5, ctx=8192),
    "tiny": Shape("tiny-llama", "llama", 2, 64, 128, 4, 2, 300, ctx=256),
}


def _random_blocks(rng: np.random.Generator, qtype: int, n: int, k: int) -> np.ndarray:
    """(n, row_bytes) uint8 of random blocks with sane scales (or float32 (n, k) for F32)."""
    from edgerun.quant.traits import TRAITS, row_bytes

    t = TRAITS[qtype]
    if t.name == "F32":
        return (rng.standard_normal((n, k), dtype=np.float32) * 0.05).astype(np.float32)
    if t.name == "F16":
        return (rng.standard_normal((n, k), dtype=np.float32) * 0.05).astype(np.float16).view(np.uint8)
    if t.name == "BF16":
        v = (rng.standard_normal((n, k), dtype=np.float32) * 0.05).view(np.uint32)
        return (v >> 16).astype(np.uint16).view(np.uint8).reshape(n, 2 * k)
    rb = row_bytes(qtype, k)
    raw = rng.integers(0, 256, size=(n, rb), dtype=np.uint8)
    blocks = raw.reshape(-1).view(t.dtype)
    scale = 0.05 / (16 if t.name.startswith(("Q4", "Q5")) else 64 if t.name == "Q6_K" else 128)
    if t.name in ("Q4_K", "Q5_K"):
        scale /= 32.0  # multiplied by 6-bit sub-block scales
    if t.name == "Q6_K":
        scale /= 64.0
    for f in ("d", "dmin", "m"):
        if f in t.dtype.names:
            blocks[f] = np.float16(scale)
    return raw


def write_synthetic_gguf(path: str | os.PathLike, shape: Shape, qtype: int = 2, seed: int = 0,
                         norm_qtype: int = 0, head_qtype: int | None = None) -> Path:
    """Write a runnable synthetic GGUF of ``shape`` (weights ``qtype``, norms F32) with an SPM vocab.

    Tensors are streamed to disk one at a time, so the file may be larger than RAM would like.
    """
    import gguf

    from edgerun.quant.traits import TRAITS

    rng = np.random.default_rng(seed)
    s = shape
    hd = s.dim // s.n_heads
    path = Path(path)
    w = gguf.GGUFWriter(str(path), s.arch)
    p = s.arch + "."
    w.add_uint32(p + "block_count", s.n_layers)
    w.add_uint32(p + "context_length", s.ctx)
    w.add_uint32(p + "embedding_length", s.dim)
    w.add_uint32(p + "feed_forward_length", s.ffn_dim)
    w.add_uint32(p + "attention.head_count", s.n_heads)
    w.add_uint32(p + "attention.head_count_kv", s.n_kv_heads)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(p + "rope.freq_base", s.rope_base)
    w.add_uint32("general.file_type", 2 if qtype == 2 else 0)
    # a SentencePiece-style vocabulary: unk, bos, eos, 256 byte tokens, then filler pieces
    n_fill = max(s.vocab - 259, 0)
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"\u2581t{i}" for i in range(n_fill)]
    toks = toks[: s.vocab]
    types = [2, 3, 3] + [6] * 256 + [1] * n_fill
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(n_fill)][: s.vocab - 259])
    w.add_token_types(types[: s.vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    specs: list[tuple[str, int, tuple[int, ...]]] = []  # name, qtype, (K, N) or (K,)
    head_q = qtype if head_qtype is None else head_qtype
    specs.append(("token_embd.weight", head_q, (s.dim, s.vocab)))
    for i in range(s.n_layers):
        b = f"blk.{i}."
        qd, kvd = s.n_heads * hd, s.n_kv_heads * hd
        specs += [(b + "attn_norm.weight", norm_qtype, (s.dim,)),
                  (b + "attn_q.weight", qtype, (s.dim, qd)),
                  (b + "attn_k.weight", qtype, (s.dim, kvd)),
                  (b + "attn_v.weight", qtype, (s.dim, kvd)),
                  (b + "attn_output.weight", qtype, (qd, s.dim)),
                  (b + "ffn_norm.weight", norm_qtype, (s.dim,)),
                  (b + "ffn_gate.weight", qtype, (s.dim, s.ffn_dim)),
                  (b + "ffn_up.weight", qtype, (s.dim, s.ffn_dim)),
                  (b + "ffn_down.weight", qtype, (s.ffn_dim, s.dim))]
        if s.qkv_bias:
            specs += [(b + "attn_q.bias", 0, (qd,)), (b + "attn_k.bias", 0, (kvd,)),
                      (b + "attn_v.bias", 0, (kvd,))]
    specs.append(("output_norm.weight", norm_qtype, (s.dim,)))
    if not s.tied:
        specs.append(("output.weight", head_q, (s.dim, s.vocab)))

    def make(name: str, qt: int, shp: tuple[int, ...]) -> np.ndarray:
        if len(shp) == 1:
            if name.endswith("norm.weight"):
                return (1.0 + 0.1 * rng.standard_normal(shp[0])).astype(np.float32)
            return (0.1 * rng.standard_normal(shp[0])).astype(np.float32)
        return _random_blocks(rng, qt, shp[1], shp[0])

    for name, qt, shp in specs:
        t = TRAITS[qt]
        n_el = int(np.prod(shp))
        nbytes = n_el // t.block_size * t.type_size
        dt = np.float32 if qt == 0 else np.uint8
        if qt == 0:
            byte_shape = list(reversed(shp))
        else:
            byte_shape = list(reversed(shp[1:])) + [nbytes // max(int(np.prod(shp[1:])), 1)]
        w.add_tensor_info(name, byte_shape, np.dtype(dt), nbytes, raw_dtype=gguf.GGMLQuantizationType(qt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, qt, shp in specs:
        w.write_tensor_data(make(name, qt, shp))
    w.close()
    return path
