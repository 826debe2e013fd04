"""Quant-type traits: one table keyed by the on-disk GGML type id.

Each entry gives the block geometry, a numpy structured dtype describing one block, and a
reference (pure numpy, unoptimised) dequantizer written from the ggml block layouts. The
kernels in ``edgerun.backends`` are tested against these references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

T = GGMLQuantizationType
QK_K = 256


@dataclass(frozen=True)
class QuantTraits:
    """Geometry and reference dequantizer of one quant type."""

    qtype: int
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block
    dtype: np.dtype  # structured dtype of one block (itemsize == type_size)
    dequantize: Callable[[np.ndarray], np.ndarray]  # uint8 (..., nbytes) -> float32 (..., n)


# --------------------------------------------------------------------------- block dtypes

_F16 = "<f2"
_DTYPES: dict[int, np.dtype] = {
    T.F32: np.dtype([("v", "<f4")]),
    T.F16: np.dtype([("v", _F16)]),
    T.BF16: np.dtype([("v", "<u2")]),
    T.Q4_0: np.dtype([("d", _F16), ("qs", "u1", (16,))]),
    T.Q4_1: np.dtype([("d", _F16), ("m", _F16), ("qs", "u1", (16,))]),
    T.Q5_0: np.dtype([("d", _F16), ("qh", "u1", (4,)), ("qs", "u1", (16,))]),
    T.Q5_1: np.dtype([("d", _F16), ("m", _F16), ("qh", "u1", (4,)), ("qs", "u1", (16,))]),
    T.Q8_0: np.dtype([("d", _F16), ("qs", "i1", (32,))]),
    T.Q4_K: np.dtype([("d", _F16), ("dmin", _F16), ("scales", "u1", (12,)), ("qs", "u1", (128,))]),
    T.Q5_K: np.dtype(
        [("d", _F16), ("dmin", _F16), ("scales", "u1", (12,)), ("qh", "u1", (32,)), ("qs", "u1", (128,))]
    ),
    T.Q6_K: np.dtype([("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)), ("d", _F16)]),
}


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _low_high(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split packed nibbles: low nibbles and high nibbles as uint8 arrays."""
    return qs & 0x0F, qs >> 4


def _qh_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) uint8 little-endian 32-bit masks -> (n, 32) bits, bit i belongs to element i."""
    word = qh.astype(np.uint32) << np.array([0, 8, 16, 24], dtype=np.uint32)
    word = np.bitwise_or.reduce(word, axis=-1)
    return ((word[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12-byte 6-bit (scale, min) table of Q4_K/Q5_K: (n, 12) -> two (n, 8) int arrays.

    Sub-blocks 0..3 keep their low 6 bits in bytes j (scale) and j+4 (min); sub-blocks 4..7 keep the
    low 4 bits in byte j+4 (scale: low nibble, min: high nibble) and the top 2 bits in the spare top
    bits of bytes j-4 (scale) and j (min).
    """
    s = scales.astype(np.int32)
    sc = np.empty(s.shape[:-1] + (8,), np.int32)
    mn = np.empty_like(sc)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


# ------------------------------------------------------------------- per-block dequantizers
# Each takes a 1-D structured block array (nblocks,) and returns (nblocks, block_size) float32.


def _deq_f32(b: np.ndarray) -> np.ndarray:
    return _f32(b["v"])[:, None]


def _deq_f16(b: np.ndarray) -> np.ndarray:
    return _f32(b["v"])[:, None]


def _deq_bf16(b: np.ndarray) -> np.ndarray:
    return (b["v"].astype(np.uint32) << 16).view(np.float32)[:, None]


def _deq_q4_0(b: np.ndarray) -> np.ndarray:
    lo, hi = _low_high(b["qs"])
    q = np.concatenate([lo, hi], axis=1).astype(np.float32) - 8.0
    return _f32(b["d"])[:, None] * q


def _deq_q4_1(b: np.ndarray) -> np.ndarray:
    lo, hi = _low_high(b["qs"])
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)
    return _f32(b["d"])[:, None] * q + _f32(b["m"])[:, None]


def _q5(b: np.ndarray) -> np.ndarray:
    lo, hi = _low_high(b["qs"])
    return (np.concatenate([lo, hi], axis=1) | (_qh_bits(b["qh"]) << 4)).astype(np.float32)


def _deq_q5_0(b: np.ndarray) -> np.ndarray:
    return _f32(b["d"])[:, None] * (_q5(b) - 16.0)


def _deq_q5_1(b: np.ndarray) -> np.ndarray:
    return _f32(b["d"])[:, None] * _q5(b) + _f32(b["m"])[:, None]


def _deq_q8_0(b: np.ndarray) -> np.ndarray:
    return _f32(b["d"])[:, None] * b["qs"].astype(np.float32)


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 128) packed -> (n, 8, 32): 4 chunks of 32 bytes, low nibbles first, then high nibbles."""
    c = qs.reshape(-1, 4, 32)
    lo, hi = _low_high(c)
    return np.stack([lo, hi], axis=2).reshape(-1, 8, 32)


def _deq_q4_k(b: np.ndarray) -> np.ndarray:
    sc, mn = k_scale_min(b["scales"])
    d = _f32(b["d"])[:, None] * sc  # (n, 8)
    m = _f32(b["dmin"])[:, None] * mn
    q = _k_nibbles(b["qs"]).astype(np.float32)
    return (d[:, :, None] * q - m[:, :, None]).reshape(-1, QK_K).astype(np.float32)


def _deq_q5_k(b: np.ndarray) -> np.ndarray:
    sc, mn = k_scale_min(b["scales"])
    d = _f32(b["d"])[:, None] * sc
    m = _f32(b["dmin"])[:, None] * mn
    # sub-block s takes its 5th bit from bit s of qh[l], l = 0..31
    high = (b["qh"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (_k_nibbles(b["qs"]) | (high << 4)).astype(np.float32)
    return (d[:, :, None] * q - m[:, :, None]).reshape(-1, QK_K).astype(np.float32)


def _deq_q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    ql = b["ql"].reshape(n, 2, 2, 32)  # half, (bytes 0..31 | 32..63), l
    qh = b["qh"].reshape(n, 2, 1, 32)
    lo, hi = _low_high(ql)
    # within a 128-element half: [ql[l]&15, ql[l+32]&15, ql[l]>>4, ql[l+32]>>4], 2-bit pairs of qh[l]
    low4 = np.concatenate([lo, hi], axis=2)  # (n, 2, 4, 32)
    top2 = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3
    q = (low4 | (top2 << 4)).astype(np.float32) - 32.0
    scale = _f32(b["d"])[:, None] * b["scales"].astype(np.float32)  # (n, 16), one per 16 elements
    y = q.reshape(n, 16, 16) * scale[:, :, None]
    return y.reshape(n, QK_K).astype(np.float32)


_DEQ: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    T.F32: _deq_f32,
    T.F16: _deq_f16,
    T.BF16: _deq_bf16,
    T.Q4_0: _deq_q4_0,
    T.Q4_1: _deq_q4_1,
    T.Q5_0: _deq_q5_0,
    T.Q5_1: _deq_q5_1,
    T.Q8_0: _deq_q8_0,
    T.Q4_K: _deq_q4_k,
    T.Q5_K: _deq_q5_k,
    T.Q6_K: _deq_q6_k,
}


def _make_reference(qtype: int) -> Callable[[np.ndarray], np.ndarray]:
    dtype = _DTYPES[qtype]
    block_fn = _DEQ[qtype]
    bs, ts = GGML_QUANT_SIZES[T(qtype)]

    def deq(raw: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if raw.shape[-1] % ts:
            raise ValueError(f"{T(qtype).name}: last dim {raw.shape[-1]} is not a multiple of {ts} bytes")
        nblk = raw.shape[-1] // ts
        blocks = raw.reshape(-1, ts).view(dtype).reshape(-1)
        out = block_fn(blocks) if blocks.size else np.zeros((0, bs), np.float32)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(raw.shape[:-1] + (nblk * bs,))

    deq.__name__ = f"dequantize_{T(qtype).name.lower()}"
    deq.__doc__ = f"Reference {T(qtype).name} dequantizer: uint8 (..., nbytes) -> float32 (..., n)."
    return deq


def _build() -> dict[int, QuantTraits]:
    table: dict[int, QuantTraits] = {}
    for qt, dtype in _DTYPES.items():
        bs, ts = GGML_QUANT_SIZES[T(qt)]
        assert dtype.itemsize == ts, (T(qt).name, dtype.itemsize, ts)
        table[int(qt)] = QuantTraits(int(qt), T(qt).name, bs, ts, dtype, _make_reference(qt))
    return table


TRAITS: dict[int, QuantTraits] = _build()

# Type ids as plain ints (the on-disk ids; Numba folds them into its kernels as constants). The
# backends take their ids from here; native/ and native/cuda/ spell the same numbers, which
# tests/test_type_ids.py holds against this table.
F32, F16, BF16 = int(T.F32), int(T.F16), int(T.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = int(T.Q4_0), int(T.Q4_1), int(T.Q5_0), int(T.Q5_1), int(T.Q8_0)
Q4_K, Q5_K, Q6_K = int(T.Q4_K), int(T.Q5_K), int(T.Q6_K)
SUPPORTED: frozenset[int] = frozenset(TRAITS)
FLOAT_TYPES: frozenset[int] = frozenset((F32, F16, BF16))
QUANT_TYPES: frozenset[int] = SUPPORTED - FLOAT_TYPES
# kernel-name suffix of each type ("q4_k": mul_mat_q4_k, dequant_q4_k in native/cuda/matmul.cu)
TYPE_SUFFIX: dict[int, str] = {qt: t.name.lower() for qt, t in TRAITS.items()}


def type_name(qtype: int) -> str:
    """The GGML name of a type id ("Q4_K"), or the number itself for an id gguf does not know."""
    try:
        return T(int(qtype)).name
    except ValueError:
        return str(qtype)


def traits(qtype: int) -> QuantTraits:
    """Traits of ``qtype``; raises ValueError naming the type if it is not supported."""
    try:
        return TRAITS[int(qtype)]
    except KeyError:
        raise ValueError(f"unsupported quant type {type_name(qtype)}") from None


def row_bytes(qtype: int, k: int) -> int:
    """Bytes of one row of ``k`` elements of ``qtype`` (``k`` must be a multiple of the block size)."""
    t = traits(qtype)
    if k % t.block_size:
        raise ValueError(f"{t.name}: row length {k} is not a multiple of block size {t.block_size}")
    return k // t.block_size * t.type_size


def dequantize(raw: np.ndarray, qtype: int, k: int) -> np.ndarray:
    """Reference dequantize: (N, row_bytes) uint8 -> (N, K) float32 (F32 also takes float32 (N, K))."""
    t = traits(qtype)
    raw = np.asarray(raw)
    if t.qtype == T.F32 and raw.dtype == np.float32:
        return np.ascontiguousarray(raw).reshape(-1, k)
    rb = row_bytes(qtype, k)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, rb)
    return t.dequantize(raw)


# ---------------------------------------------------------------------------- quantizers


def _round_clip(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.rint(v), lo, hi)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Inverse of :func:`k_scale_min`: two (n, 8) ints in 0..63 -> (n, 12) uint8."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out


def _quantize_k_asym(x: np.ndarray, nbits: int) -> np.ndarray:
    """Simple (not llama.cpp-optimal) Q4_K / Q5_K quantizer; x (nblocks, 256) -> structured blocks."""
    qmax = (1 << nbits) - 1
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    hi = sub.max(axis=2)
    scale = (hi - lo) / qmax  # per sub-block
    mins = -lo  # >= 0, subtracted
    d = (scale.max(axis=1) / 63.0).astype(np.float16)
    dmin = (mins.max(axis=1) / 63.0).astype(np.float16)
    sc = _round_clip(_safe_div(scale, d.astype(np.float32)[:, None]), 0, 63)
    mn = _round_clip(_safe_div(mins, dmin.astype(np.float32)[:, None]), 0, 63)
    eff_d = d.astype(np.float32)[:, None] * sc
    eff_m = dmin.astype(np.float32)[:, None] * mn
    q = _round_clip(_safe_div(sub + eff_m[:, :, None], eff_d[:, :, None]), 0, qmax).astype(np.uint8)
    blocks = np.zeros(n, _DTYPES[T.Q4_K if nbits == 4 else T.Q5_K])
    blocks["d"] = d
    blocks["dmin"] = dmin
    blocks["scales"] = _pack_k_scales(sc, mn)
    chunks = q.reshape(n, 4, 2, 32)  # chunk j holds sub-blocks 2j (low nibble) and 2j+1 (high)
    blocks["qs"] = ((chunks[:, :, 0] & 0x0F) | ((chunks[:, :, 1] & 0x0F) << 4)).reshape(n, 128)
    if nbits == 5:
        top = (q.reshape(n, 8, 32) >> 4) & 1
        blocks["qh"] = np.bitwise_or.reduce(top << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return blocks


def _quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Simple Q6_K quantizer; x (nblocks, 256) -> structured blocks."""
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    amax_idx = np.abs(sub).argmax(axis=2)
    vmax = np.take_along_axis(sub, amax_idx[:, :, None], axis=2)[:, :, 0]
    scale = vmax / -32.0  # the extreme value maps to -32
    smax_idx = np.abs(scale).argmax(axis=1)
    smax = np.take_along_axis(scale, smax_idx[:, None], axis=1)[:, 0]
    d = (smax / -128.0).astype(np.float16)
    sc = _round_clip(_safe_div(scale, d.astype(np.float32)[:, None]), -128, 127)
    eff = d.astype(np.float32)[:, None] * sc
    q = (_round_clip(_safe_div(sub, eff[:, :, None]), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)
    blocks = np.zeros(n, _DTYPES[T.Q6_K])
    blocks["d"] = d
    blocks["scales"] = sc.astype(np.int8)
    low = q & 0x0F
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    blocks["ql"] = ql.reshape(n, 128)
    top = q >> 4
    qh = top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)
    blocks["qh"] = qh.reshape(n, 64)
    return blocks


def quantize(x: np.ndarray, qtype: int) -> np.ndarray:
    """Reference quantize: (N, K) float32 -> (N, row_bytes) uint8 (F32 returns float32 (N, K)).

    Uses ``gguf.quants`` for the types it can quantize; Q4_K/Q5_K/Q6_K use simple round-to-nearest
    quantizers from this module (valid blocks, not llama.cpp's error-minimising search).
    """
    t = traits(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize expects a 2-D array, got shape {x.shape}")
    n, k = x.shape
    rb = row_bytes(qtype, k)
    if t.qtype == T.F32:
        return x.copy()
    if t.qtype in (T.Q4_K, T.Q5_K):
        blocks = _quantize_k_asym(x.reshape(-1, QK_K), 4 if t.qtype == T.Q4_K else 5)
        return blocks.view(np.uint8).reshape(n, rb)
    if t.qtype == T.Q6_K:
        return _quantize_q6_k(x.reshape(-1, QK_K)).view(np.uint8).reshape(n, rb)
    import gguf.quants

    q = gguf.quants.quantize(x, T(t.qtype))
    return np.ascontiguousarray(q).view(np.uint8).reshape(n, rb)
