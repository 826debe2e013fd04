"""Numba CPU kernels over GGUF block-quantized weights.

Layout: a weight is uint8 ``(N, row_bytes)`` (F32: float32 ``(N, K)``). One set of row kernels
(matvec, fused small-batch matmul, row dequantize) serves every block type; the per-type work lives
in one inlined helper, ``_deq_block``, which branches on the type id (loop-invariant, cheap next to
the 32..256-element inner loops that LLVM vectorizes) and either stores the dequantized block or,
for decode, multiplies it with x straight into 32 accumulator lanes (``_emit``).

Decode (B=1) never materialises dequantized weights and reduces horizontally once per row. Blocks
are addressed through per-block array views so every index is provably non-negative (no
wraparound selects, no gathers). For B>1 every block is dequantized once and used for all B rows;
for larger batches rows are dequantized in chunks and multiplied with BLAS.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from edgerun.backends.base import QTensor
from edgerun.quant.traits import (
    BF16,
    F16,
    F32,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    SUPPORTED,
    TRAITS,
    row_bytes,
    type_name,
)

_ROWS = 16  # rows per parallel work item of the matvec
_SMALL_BATCH = 8  # up to this many rows of x use the fused kernel; above, chunked dequant + BLAS

# half -> float lookup tables (256 KiB each, stay in L2)
_F16_LUT = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
_BF16_LUT = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)

_f32 = np.float32


# ------------------------------------------------------------------------------ helpers


@njit(inline="always")
def _half(lut, row, o):
    return lut[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]


@njit(inline="always")
def _u32(row, o):
    return (
        np.int64(row[o])
        | (np.int64(row[o + 1]) << 8)
        | (np.int64(row[o + 2]) << 16)
        | (np.int64(row[o + 3]) << 24)
    )


@njit(inline="always")
def _scale_min(row, so, j):
    """6-bit (scale, min) of sub-block j from the 12-byte K-quant table at row[so:]."""
    if j < 4:
        return np.int64(row[so + j]) & 63, np.int64(row[so + j + 4]) & 63
    sc = (np.int64(row[so + j + 4]) & 15) | ((np.int64(row[so + j - 4]) >> 6) << 4)
    mn = (np.int64(row[so + j + 4]) >> 4) | ((np.int64(row[so + j]) >> 6) << 4)
    return sc, mn


@njit(inline="always", fastmath=True)
def _emit(out, i, v, x, fma):
    """Store element i of a block: out[i] = v, or (fma) accumulate v * x[i] into 32 lanes out[i % 32]."""
    if fma:
        out[i & 31] += v * x[i]
    else:
        out[i] = v


@njit(inline="always", fastmath=True)
def _nibbles32(row, qo, qh, d, m, out, x, fma):
    """32-element block, nibbles at row[qo:qo+16] (low: 0..15, high: 16..31), 5th bit i of qh: d*q + m.

    qo is a literal at every call site so indices stay provably non-negative after inlining.
    """
    for j in range(16):
        b = row[qo + j]
        _emit(out, j, d * _f32((b & 15) | (((qh >> j) & 1) << 4)) + m, x, fma)
        _emit(out, 16 + j, d * _f32((b >> 4) | (((qh >> (j + 16)) & 1) << 4)) + m, x, fma)


@njit(inline="always", fastmath=True)
def _deq_block(kind, bs, row, srow, lut, out, x, fma):
    """Dequantize one block (row, srow: its bytes) into out[:bs]; with fma, add w * x into 32 lanes of out."""
    if kind == Q8_0:
        d = _half(lut, row, 0)
        for i in range(32):
            _emit(out, i, d * _f32(srow[2 + i]), x, fma)
    elif kind == Q4_0:
        d = _half(lut, row, 0)
        _nibbles32(row, 2, 0, d, _f32(-8.0) * d, out, x, fma)
    elif kind == Q4_1:
        _nibbles32(row, 4, 0, _half(lut, row, 0), _half(lut, row, 2), out, x, fma)
    elif kind == Q5_0:
        d = _half(lut, row, 0)
        _nibbles32(row, 6, _u32(row, 2), d, _f32(-16.0) * d, out, x, fma)
    elif kind == Q5_1:
        _nibbles32(row, 8, _u32(row, 4), _half(lut, row, 0), _half(lut, row, 2), out, x, fma)
    elif kind == Q4_K or kind == Q5_K:
        d = _half(lut, row, 0)
        dmin = _half(lut, row, 2)
        qo = 16 if kind == Q4_K else 48
        for j in range(4):
            sc0, m0 = _scale_min(row, 4, 2 * j)
            sc1, m1 = _scale_min(row, 4, 2 * j + 1)
            d0 = d * _f32(sc0)
            d1 = d * _f32(sc1)
            n0 = dmin * _f32(m0)
            n1 = dmin * _f32(m1)
            x0 = 64 * j
            for l in range(32):
                b = row[qo + 32 * j + l]
                lo = b & 15
                hi = b >> 4
                if kind == Q5_K:
                    h = row[16 + l] >> (2 * j)
                    lo |= (h & 1) << 4
                    hi |= (h & 2) << 3
                _emit(out, x0 + l, d0 * _f32(lo) - n0, x, fma)
                _emit(out, x0 + 32 + l, d1 * _f32(hi) - n1, x, fma)
    elif kind == Q6_K:
        d = _half(lut, row, 208)
        for hf in range(2):
            qlo = 64 * hf
            qho = 128 + 32 * hf
            sco = 192 + 8 * hf
            xb = 128 * hf
            for g in range(2):  # one int8 scale per 16 elements
                s1 = d * _f32(srow[sco + g])
                s2 = d * _f32(srow[sco + g + 2])
                s3 = d * _f32(srow[sco + g + 4])
                s4 = d * _f32(srow[sco + g + 6])
                for l in range(16 * g, 16 * g + 16):
                    a = row[qlo + l]
                    c = row[qlo + 32 + l]
                    h = row[qho + l]
                    _emit(out, xb + l, s1 * _f32(((a & 15) | ((h & 3) << 4)) - 32), x, fma)
                    _emit(out, xb + 32 + l, s2 * _f32(((c & 15) | ((h & 12) << 2)) - 32), x, fma)
                    _emit(out, xb + 64 + l, s3 * _f32(((a >> 4) | (h & 48)) - 32), x, fma)
                    _emit(out, xb + 96 + l, s4 * _f32(((c >> 4) | ((h >> 2) & 48)) - 32), x, fma)
    else:  # F16 / BF16
        for i in range(bs):
            _emit(out, i, _half(lut, row, 2 * i), x, fma)


@njit(inline="always")
def _deq_row(kind, bs, ts, row, srow, lut, out):
    for b in range(out.shape[0] // bs):
        o = b * ts
        _deq_block(kind, bs, row[o : o + ts], srow[o : o + ts], lut, out[b * bs : (b + 1) * bs], out, False)


# ------------------------------------------------------------------------------ int8 decode (legacy types)
# For B=1 with Q4_0 / Q5_0 / Q8_0 weights, x is quantized to int8 per 32 (like ggml's Q8_0) and each
# block's dot product is an exact int32 sum; one float multiply-add per block. LLVM vectorizes
# the 16-step integer loop far better than the float dequantize-and-FMA loop.

_INT8_KINDS = (Q4_0, Q5_0, Q8_0)


@njit(cache=True, fastmath=True)
def _quantize_x_q8(x, xq, dx, sx):
    """x (K,) float32 -> xq int32 (K,) in [-127, 127], dx (K/32,) scales, sx (K/32,) block sums."""
    for b in range(x.shape[0] // 32):
        m = _f32(0.0)
        for i in range(32):
            m = max(m, abs(x[b * 32 + i]))
        inv = _f32(127.0) / m if m > 0 else _f32(0.0)
        dx[b] = m / _f32(127.0)
        s = np.int32(0)
        for i in range(32):
            q = np.int32(np.round(x[b * 32 + i] * inv))
            xq[b * 32 + i] = q
            s += q
        sx[b] = s


@njit(inline="always", fastmath=True)
def _dot_q8_0(srow, o, xq, xb):
    s = np.int32(0)
    for j in range(32):
        s += np.int32(srow[o + 2 + j]) * xq[xb + j]
    return s


@njit(inline="always", fastmath=True)
def _dot_q5_0(row, o, xq, xb, sxb):
    qh = (np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8) | (np.int32(row[o + 4]) << 16)
          | (np.int32(row[o + 5]) << 24))
    s = np.int32(0)
    for j in range(16):
        bb = np.int32(row[o + 6 + j])
        lo = (bb & np.int32(15)) | (((qh >> np.int32(j)) & np.int32(1)) << np.int32(4))
        hi = (bb >> np.int32(4)) | (((qh >> np.int32(j + 16)) & np.int32(1)) << np.int32(4))
        s += lo * xq[xb + j] + hi * xq[xb + 16 + j]
    return s - np.int32(16) * sxb


@njit(inline="always", fastmath=True)
def _dot_q4_0(row, o, xq, xb, sxb):
    s = np.int32(0)
    for j in range(16):
        bb = np.int32(row[o + 2 + j])
        s += (bb & np.int32(15)) * xq[xb + j] + (bb >> np.int32(4)) * xq[xb + 16 + j]
    return s - np.int32(8) * sxb


# One kernel per type: a type branch inside the block loop stops LLVM from vectorizing it.
@njit(parallel=True, cache=True, fastmath=True)
def _mv_q8_0(data, xq, dx, sx, lut, out):
    sdata = data.view(np.int8)
    for r in prange(data.shape[0]):
        row = data[r]
        srow = sdata[r]
        acc = _f32(0.0)
        for b in range(dx.shape[0]):
            acc += _half(lut, row, b * 34) * dx[b] * _f32(_dot_q8_0(srow, b * 34, xq, b * 32))
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def _mv_q5_0(data, xq, dx, sx, lut, out):
    for r in prange(data.shape[0]):
        row = data[r]
        acc = _f32(0.0)
        for b in range(dx.shape[0]):
            acc += _half(lut, row, b * 22) * dx[b] * _f32(_dot_q5_0(row, b * 22, xq, b * 32, sx[b]))
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def _mv_q4_0(data, xq, dx, sx, lut, out):
    for r in prange(data.shape[0]):
        row = data[r]
        acc = _f32(0.0)
        for b in range(dx.shape[0]):
            acc += _half(lut, row, b * 18) * dx[b] * _f32(_dot_q4_0(row, b * 18, xq, b * 32, sx[b]))
        out[r] = acc


def _matvec_int8(qtype: int, data: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    k = x.shape[0]
    xq = np.empty(k, np.int32)
    dx = np.empty(k // 32, np.float32)
    sx = np.empty(k // 32, np.int32)
    _quantize_x_q8(x, xq, dx, sx)
    kernel = _mv_q8_0 if qtype == Q8_0 else _mv_q5_0 if qtype == Q5_0 else _mv_q4_0
    kernel(data, xq, dx, sx, _F16_LUT, out)


# ------------------------------------------------------------------------------ row kernels


@njit(parallel=True, cache=True, fastmath=True)
def _matvec_kernel(kind, bs, ts, data, sdata, x, lut, out):
    n = data.shape[0]
    nb = x.shape[0] // bs
    for c in prange((n + _ROWS - 1) // _ROWS):
        acc = np.empty(32, np.float32)
        for r in range(c * _ROWS, min(n, (c + 1) * _ROWS)):
            for i in range(32):
                acc[i] = 0.0
            row = data[r]
            srow = sdata[r]
            for b in range(nb):
                o = b * ts
                xo = b * bs
                _deq_block(kind, bs, row[o : o + ts], srow[o : o + ts], lut, acc, x[xo : xo + bs], True)
            out[r] = acc.sum()


@njit(parallel=True, cache=True, fastmath=True)
def _matmul_kernel(kind, bs, ts, data, sdata, x, lut, out):
    nb, k = x.shape
    for r in prange(data.shape[0]):
        w = np.empty(k, np.float32)
        _deq_row(kind, bs, ts, data[r], sdata[r], lut, w)
        for bi in range(nb):
            s = _f32(0.0)
            for i in range(k):
                s += w[i] * x[bi, i]
            out[bi, r] = s


@njit(parallel=True, cache=True, fastmath=True)
def _deq_rows_kernel(kind, bs, ts, data, sdata, ids, lut, out):
    for t in prange(ids.shape[0]):
        r = ids[t]
        _deq_row(kind, bs, ts, data[r], sdata[r], lut, out[t])


@njit(parallel=True, cache=True, fastmath=True)
def _matvec_f32_kernel(w, x, out):
    k = x.shape[0]
    for r in prange(w.shape[0]):
        s = _f32(0.0)
        for i in range(k):
            s += w[r, i] * x[i]
        out[r] = s


# ------------------------------------------------------------------------------ public API


def _geometry(qtype: int, k: int) -> tuple[int, int, np.ndarray]:
    """(logical block size, bytes per logical block, half lut) of the row kernels."""
    t = TRAITS[qtype]
    if qtype in (F16, BF16):
        return k, 2 * k, (_BF16_LUT if qtype == BF16 else _F16_LUT)
    return t.block_size, t.type_size, _F16_LUT


def _check(qtype: int, data: np.ndarray, k: int) -> np.ndarray:
    if qtype not in SUPPORTED:
        raise ValueError(f"numba backend: unsupported quant type {type_name(qtype)}")
    data = np.asarray(data)
    if qtype == F32:
        if data.dtype != np.float32 or data.ndim != 2 or data.shape[1] != k:
            raise ValueError(f"F32 weight must be float32 (N, {k}), got {data.dtype} {data.shape}")
        return np.ascontiguousarray(data)
    rb = row_bytes(qtype, k)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != rb:
        raise ValueError(
            f"{TRAITS[qtype].name} weight must be uint8 (N, {rb}) for K={k}, got {data.dtype} {data.shape}"
        )
    return np.ascontiguousarray(data)


def dequantize_rows(qtype: int, data: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Dequantize rows ``ids`` of a weight: -> (len(ids), k) float32."""
    data = _check(qtype, data, k)
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= data.shape[0]):
        raise IndexError(f"row id out of range [0, {data.shape[0]})")
    if qtype == F32:
        return data[ids]
    out = np.empty((ids.shape[0], k), np.float32)
    if ids.size == 0 or k == 0:
        return out
    bs, ts, lut = _geometry(qtype, k)
    _deq_rows_kernel(qtype, bs, ts, data, data.view(np.int8), ids, lut, out)
    return out


def get_rows(qtype: int, data: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Embedding lookup: rows ``ids`` (T,) of ``data`` dequantized -> (T, K) float32."""
    return dequantize_rows(qtype, data, ids, k)


def matmul(qtype: int, data: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x @ W.T``: x (B, K) float32 (or (K,)), W in block layout (N, row_bytes) -> (B, N) float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    b, k = x2.shape
    data = _check(qtype, data, k)
    n = data.shape[0]
    out = np.empty((b, n), np.float32)
    if b == 0 or n == 0:
        return out[0] if squeeze else out
    if b > _SMALL_BATCH:
        chunk = max(16, (1 << 20) // max(k, 1))  # ~4 MiB of f32 weights per BLAS call
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            if qtype == F32:
                w = data[r0:r1]
            else:
                w = dequantize_rows(qtype, data, np.arange(r0, r1), k)
            np.matmul(x2, w.T, out=out[:, r0:r1])
    elif qtype == F32:
        if b == 1:
            _matvec_f32_kernel(data, x2[0], out[0])
        else:
            np.matmul(x2, data.T, out=out)
    else:
        bs, ts, lut = _geometry(qtype, k)
        sdata = data.view(np.int8)
        if b == 1 and qtype in _INT8_KINDS:
            _matvec_int8(qtype, data, x2[0], out[0])
        elif b == 1:
            _matvec_kernel(qtype, bs, ts, data, sdata, x2[0], lut, out[0])
        else:
            _matmul_kernel(qtype, bs, ts, data, sdata, x2, lut, out)
    return out[0] if squeeze else out


def set_threads(n: int) -> None:
    """Number of threads the kernels use (clamped to 1..numba.config.NUMBA_NUM_THREADS)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def get_threads() -> int:
    """Threads the kernels currently use."""
    return int(numba.get_num_threads())


def prewarm(qtypes: tuple[int, ...] | None = None) -> None:
    """Compile (or load from the on-disk cache) the kernels for ``qtypes`` (default: all) with tiny inputs."""
    rng = np.random.default_rng(0)
    for qt in qtypes if qtypes is not None else sorted(SUPPORTED):
        k = TRAITS[qt].block_size if TRAITS[qt].block_size > 1 else 32
        if qt == F32:
            w = np.zeros((2, k), np.float32)
        else:
            w = np.zeros((2, row_bytes(qt, k)), np.uint8)
        x = rng.standard_normal((2, k)).astype(np.float32)
        matmul(qt, w, x[:1])
        matmul(qt, w, x)
        get_rows(qt, w, np.array([1, 0]), k)


class NumbaBackend:
    """:class:`~edgerun.backends.base.Backend` over the Numba kernels."""

    name = "numba"

    def __init__(self, n_threads: int | None = None) -> None:
        if n_threads is not None:
            set_threads(n_threads)

    def supports(self, op: str, qtype: int) -> bool:
        """matmul and get_rows for every type of :data:`edgerun.quant.traits.SUPPORTED`."""
        return op in ("matmul", "get_rows") and int(qtype) in SUPPORTED

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        """x (B, K) float32 -> (B, N) float32."""
        return matmul(w.qtype, w.data, x)

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """ids (T,) -> (T, K) float32."""
        return get_rows(w.qtype, w.data, ids, w.k)

    def set_threads(self, n: int) -> None:
        """Thread count for the kernels."""
        set_threads(n)
