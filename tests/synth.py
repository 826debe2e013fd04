"""Tiny synthetic GGUF models (random weights) for fast unit tests of the model code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from edgerun.quant.traits import quantize


def write_model(path: Path, arch: str = "llama", n_layers: int = 2, dim: int = 64, ffn: int = 96,
                n_heads: int = 4, n_kv: int = 2, vocab: int = 97, qtype: int = T.Q8_0,
                window: int = 0, seed: int = 0, tied: bool = False, drop: str | None = None,
                bad_shape: str | None = None) -> Path:
    """Write a model of the given architecture; `drop`/`bad_shape` name a tensor to omit/corrupt."""
    rng = np.random.default_rng(seed)
    hd = dim // n_heads if arch != "gemma3" else 32
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_sliding_window(window or 4)

    def mat(name: str, n: int, k: int, qt: int = qtype, scale: float = 0.08) -> None:
        if name == drop:
            return
        x = (rng.standard_normal((n, k)) * scale).astype(np.float32)
        if name == bad_shape:
            x = x[:, : k // 2] if k >= 64 else x[: n // 2]
        if qt == T.F32:
            w.add_tensor(name, x)
        else:
            data = quantize(x, qt)
            w.add_tensor(name, data, raw_dtype=T(qt))  # (n, row_bytes) uint8

    def vec(name: str, n: int, base: float = 1.0) -> None:
        if name == drop:
            return
        w.add_tensor(name, (base + 0.05 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", vocab, dim, scale=0.5)
    vec("output_norm.weight", dim)
    if not tied:
        mat("output.weight", vocab, dim)
    for i in range(n_layers):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", dim)
        mat(p + "attn_q.weight", n_heads * hd, dim)
        mat(p + "attn_k.weight", n_kv * hd, dim)
        mat(p + "attn_v.weight", n_kv * hd, dim)
        mat(p + "attn_output.weight", dim, n_heads * hd)
        vec(p + "ffn_norm.weight", dim)
        mat(p + "ffn_gate.weight", ffn, dim)
        mat(p + "ffn_up.weight", ffn, dim)
        mat(p + "ffn_down.weight", dim, ffn)
        if arch == "qwen2":
            for nm, n in (("q", n_heads * hd), ("k", n_kv * hd), ("v", n_kv * hd)):
                vec(p + f"attn_{nm}.bias", n, base=0.0)
        if arch == "gemma3":
            vec(p + "attn_q_norm.weight", hd)
            vec(p + "attn_k_norm.weight", hd)
            vec(p + "post_attention_norm.weight", dim)
            vec(p + "post_ffw_norm.weight", dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def bench_gpu_module() -> ModuleType:
    """scripts/bench_gpu.py as a module (its synthetic GGUF writer of real model shapes)."""
    if "bench_gpu" in sys.modules:
        return sys.modules["bench_gpu"]
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_gpu", root / "scripts" / "bench_gpu.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = mod
    spec.loader.exec_module(mod)
    return mod
