"""The layer table (``er_layer_t`` array) and the one-call layer stack and step.

A model's layers are described to the library once: per layer the addresses, types and row
strides of its seven matrices, its norm and bias vectors and its attention constants, in an array
of :class:`~edgerun.backends.native.binding.LayerC`. ``er_layers`` then runs every layer of a step
in one call and ``er_step`` the whole step (embedding rows, layers, final norm, output head). The
table is built from the model's :class:`~edgerun.models.base.Layer` dataclasses and
:class:`~edgerun.models.base.ModelArgs`, and cached per model by the caller.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import numpy as np

from edgerun.backends.base import QTensor, StackModel
from edgerun.backends.native import binding as b
from edgerun.backends.native.errors import NativeArgumentError
from edgerun.backends.native.ops import ACT, check_weight, weight
from edgerun.quant.traits import type_name

if TYPE_CHECKING:
    from edgerun.models.base import KVCache, SeqBatch


def layer_table(model: StackModel) -> tuple[ctypes.Array, list[np.ndarray]]:
    """The ``er_layer_t`` array of a model's layers and the arrays its pointers need kept alive."""
    a = model.args
    table = (b.LayerC * len(model.layers))()
    keep: list[np.ndarray] = []

    def vec(v: np.ndarray | None) -> int | None:
        if v is None:
            return None
        v = b.f32c(v)
        keep.append(v)
        return v.ctypes.data

    def mat(w: QTensor | None, k: int, n: int) -> tuple[int, int, int]:
        """(address, type, row stride) of a layer matrix that must be (n, k)."""
        if w is None:  # e.g. an MoE layer's FFN: the C layer knows dense FFNs only
            raise NativeArgumentError("er_layers: the native layer stack needs every layer's seven dense "
                                      f"matrices; layer {i} lacks one")
        if w.k != k or w.n != n:
            raise ValueError(f"{w.name}: shape ({w.n}, {w.k}) does not fit its layer, expected ({n}, {k})")
        d, stride = check_weight("er_layers", int(w.qtype), w.data, k)
        keep.append(d)
        return d.ctypes.data, int(w.qtype), stride

    d, qd, kd, f = a.dim, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.ffn_dim
    for i, ly in enumerate(model.layers):
        e = table[i]
        e.attn_norm, e.post_attn_norm = vec(ly.attn_norm), vec(ly.post_attn_norm)
        e.bq, e.bk, e.bv = vec(ly.bq), vec(ly.bk), vec(ly.bv)
        e.q_norm, e.k_norm = vec(ly.q_norm), vec(ly.k_norm)
        e.ffn_norm, e.post_ffn_norm = vec(ly.ffn_norm), vec(ly.post_ffn_norm)
        e.wq, e.qt_q, e.rb_q = mat(ly.wq, d, qd)
        e.wk, e.qt_k, e.rb_k = mat(ly.wk, d, kd)
        e.wv, e.qt_v, e.rb_v = mat(ly.wv, d, kd)
        e.wo, e.qt_o, e.rb_o = mat(ly.wo, qd, d)
        e.wg, e.qt_g, e.rb_g = mat(ly.w_gate, d, f)
        e.wu, e.qt_u, e.rb_u = mat(ly.w_up, d, f)
        e.wd, e.qt_d, e.rb_d = mat(ly.w_down, f, d)
        e.n_heads, e.n_kv_heads, e.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        e.neox, e.window = int(bool(a.rope_neox)), int(a.windows[i])
        e.rope_base, e.pos_scale, e.attn_scale = a.rope_bases[i], a.rope_pos_scales[i], a.attn_scale
        e.ffn_dim, e.act = f, ACT[a.activation]
    return table, keep


def _kv_pointers(kv: KVCache, cache: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer K and V cache addresses as uint64 arrays, checked and kept per cache object (all
    layers of one dtype: float32, or float16)."""
    key = tuple(map(id, kv.k)) + tuple(map(id, kv.v))
    hit = cache.get(kv) if cache is not None else None
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    dt = kv.k[0].dtype
    for arr in kv.k + kv.v:
        if not (arr.flags.c_contiguous and arr.dtype == dt and dt in (np.float32, np.float16)):
            raise ValueError("KV cache must be C-contiguous float32 or float16, one dtype for all layers")
    kc = np.array([arr.ctypes.data for arr in kv.k], np.uint64)
    vc = np.array([arr.ctypes.data for arr in kv.v], np.uint64)
    if cache is not None:
        cache[kv] = (key, kc, vc, kv.k[:], kv.v[:])  # the arrays stay alive with their addresses
    return kc, vc


def _stack_args(model: StackModel, batch: SeqBatch, kv: KVCache, cache: dict | None) -> tuple[tuple, dict]:
    """The layer-stack arguments shared by er_layers and er_step, from the cached layer table.

    ``cache`` (a dict owned by the caller, e.g. a weak-keyed one per model) keeps the layer table
    between steps; it is rebuilt when the model's weight arrays were replaced (the old ones stay
    alive with the old table, so a stale entry can never point at freed memory).
    """
    layers = model.layers
    # weights are replaced all together (runtime/weights.py), so the first and last identify them
    key = (len(layers), id(layers[0].wq.data), id(layers[-1].w_down.data))
    hit = cache.get(model) if cache is not None else None
    if hit is None or hit[0] != key:
        hit = (key, *layer_table(model))
        if cache is not None:
            cache[model] = hit
    kc, vc = _kv_pointers(kv, cache)
    f16 = int(kv.k[0].dtype == np.float16)
    return (ctypes.addressof(hit[1]), len(layers), b.ptr(kc), b.ptr(vc), f16), batch.flat()


def _describe(model: StackModel, t: int) -> str:
    a = model.args
    return (f"{len(model.layers)} layers, T={t}, D={a.dim}, heads {a.n_heads}/{a.n_kv_heads}x{a.head_dim}, "
            f"F={a.ffn_dim}")


def run_layers(model: StackModel, x: np.ndarray, batch: SeqBatch, kv: KVCache,
               cache: dict | None = None) -> np.ndarray:
    """Every layer of a CPU-only step in one native call: x (T, D) -> x after the last layer."""
    head, f = _stack_args(model, batch, kv, cache)
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    t, d = out.shape
    eps = float(model.args.norm_eps)
    rc = b.lib.er_layers(*head, b.ptr(out), t, d, eps, b.ptr(f["pos"]), b.ptr(f["write_slots"]),
                         b.ptr(f["tok_seq"]), b.ptr(f["read_slots"]), b.ptr(f["read_off"]), int(f["max_ctx"]))
    if rc:
        raise b.fail(rc, "er_layers", _describe(model, t))
    return out


def run_step(model: StackModel, batch: SeqBatch, kv: KVCache, sel: np.ndarray,
             cache: dict | None = None) -> np.ndarray:
    """A whole CPU-only step in one native call: embedding rows of ``batch.tokens``, every layer, the
    final norm and the output head for batch rows ``sel`` -> logits (len(sel), vocab).

    Token ids must be in range (the runner checks them)."""
    head, f = _stack_args(model, batch, kv, cache)
    a = model.args
    emb, out_w = model.tok_embd, model.output
    ep, es, _ = weight("er_step", int(emb.qtype), emb.data, emb.k)
    op, os_, n_vocab = weight("er_step", int(out_w.qtype), out_w.data, out_w.k)
    tokens = np.ascontiguousarray(batch.tokens, dtype=np.int64)
    sel = np.ascontiguousarray(sel, dtype=np.int64)
    norm = b.f32c(model.out_norm)
    logits = np.empty((len(sel), n_vocab), np.float32)
    rc = b.lib.er_step(*head, len(tokens), a.dim, float(a.norm_eps), b.ptr(f["pos"]), b.ptr(f["write_slots"]),
                       b.ptr(f["tok_seq"]), b.ptr(f["read_slots"]), b.ptr(f["read_off"]), int(f["max_ctx"]),
                       int(emb.qtype), ep, es, b.ptr(tokens), float(a.embed_scale), b.ptr(norm),
                       int(out_w.qtype), op, os_, n_vocab, b.ptr(sel), len(sel), b.ptr(logits))
    if rc:
        raise b.fail(rc, "er_step", f"{_describe(model, len(tokens))}, embedding {type_name(emb.qtype)}, "
                                    f"head {type_name(out_w.qtype)}, vocab {n_vocab}")
    return logits
