"""The native operations, typed: quantized matmul and row lookup, the fused FFN, light ops, the
batch tiles and the tuning switches.

Every function here needs the library (``binding.lib``; it raises
:class:`~edgerun.backends.native.errors.NativeUnavailableError` when it is not loaded). Inputs are
checked before the call and a failed call raises the exception of its ``er_status``
(:mod:`edgerun.backends.native.errors`), naming the sizes and types involved.

Weights are validated once per array: :func:`weight` keeps the checked pointer and row stride
under a weak reference to the array, so the hot path is a dict lookup and an identity check.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

from edgerun.backends.base import QTensor
from edgerun.backends.native import binding as b
from edgerun.backends.native.errors import NativeShapeError, NativeUnsupportedError
from edgerun.quant.traits import F32, SUPPORTED, TRAITS, type_name

ACT = {"silu": 0, "gelu": 1, "gelu_tanh": 1}  # activation names -> the C act codes


# ------------------------------------------------------------------ weights


def check_weight(fn: str, qtype: int, data: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """``data`` as the library reads it (rows contiguous) and its row stride in bytes.

    Raises NativeUnsupportedError for a type the kernels lack, NativeShapeError when ``k`` is not a
    multiple of the block or ``data`` has the wrong dtype or width; ``fn`` names the entry point."""
    if qtype not in SUPPORTED:
        raise NativeUnsupportedError(f"{fn}: unsupported quant type {type_name(qtype)}")
    t = TRAITS[qtype]
    if k % t.block_size:
        raise NativeShapeError(f"{fn}: size not a multiple of the block size "
                               f"(K={k}, {t.name}, block {t.block_size})")
    rb = k // t.block_size * t.type_size
    if qtype == F32:
        if data.dtype != np.float32 or data.ndim != 2 or data.shape[1] != k:
            raise NativeShapeError(f"{fn}: F32 weight must be float32 (N, {k}), "
                                   f"got {data.dtype} {data.shape}")
    elif data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != rb:
        raise NativeShapeError(f"{fn}: {t.name} weight must be uint8 (N, {rb}) for K={k}, "
                               f"got {data.dtype} {data.shape}")
    if data.strides[1] != data.itemsize:
        data = np.ascontiguousarray(data)
    return data, data.strides[0]


_wcache: dict[int, tuple] = {}


def weight(fn: str, qtype: int, data: np.ndarray, k: int) -> tuple[object, int, int]:
    """(pointer, row stride, rows) of a validated weight, cached per weight array."""
    e = _wcache.get(id(data))
    if e is not None and e[0]() is data and e[1] == qtype and e[2] == k:
        return e[3], e[4], e[5]
    d2, stride = check_weight(fn, qtype, data, k)
    addr = d2.ctypes.data
    if d2 is data:
        if len(_wcache) > 4096:
            _wcache.clear()
        try:
            _wcache[id(data)] = (weakref.ref(data), qtype, k, addr, stride, d2.shape[0])
        except TypeError:
            pass
        return addr, stride, d2.shape[0]
    return b.ptr(d2), stride, d2.shape[0]  # a temporary copy: no caching, the view keeps it alive


# ------------------------------------------------------------------ quantized products


def matmul(qtype: int, data: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x @ W.T``: x (B, K) float32 (or (K,)), W (N, row_bytes) uint8 / (N, K) float32 -> (B, N) float32."""
    x = b.f32c(x)
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    nb, k = x2.shape
    qtype = int(qtype)
    wp, rstride, n = weight("er_matmul", qtype, data, k)
    out = np.empty((nb, n), np.float32)
    if nb and n:
        rc = b.lib.er_matmul(qtype, wp, rstride, n, k, b.ptr(x2), nb, b.ptr(out))
        if rc:
            raise b.fail(rc, "er_matmul", f"B={nb}, N={n}, K={k}, {type_name(qtype)}")
    return out[0] if squeeze else out


def get_rows(qtype: int, data: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Rows ``ids`` (T,) of a weight, dequantized -> (T, K) float32."""
    qtype = int(qtype)
    data, rstride = check_weight("er_get_rows", qtype, data, k)
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= data.shape[0]):
        raise IndexError(f"row id out of range [0, {data.shape[0]})")
    out = np.empty((ids.shape[0], k), np.float32)
    if ids.size and k:
        rc = b.lib.er_get_rows(qtype, b.ptr(data), rstride, k, b.ptr(ids), ids.shape[0], b.ptr(out))
        if rc:
            raise b.fail(rc, "er_get_rows", f"T={ids.shape[0]}, K={k}, {type_name(qtype)}")
    return out


# ------------------------------------------------------------------ light ops


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """Row-wise ``x / sqrt(mean(x^2) + eps) * w`` over the last axis."""
    x = b.f32c(x)
    d = x.shape[-1]
    out = np.empty_like(x)
    wp = None
    if w is not None:
        w = b.f32c(w)
        wp = b.ptr(w)
    b.lib.er_rms_norm(b.ptr(x), wp, b.ptr(out), x.size // max(d, 1), d, float(eps))
    return out


def rope(x: np.ndarray, pos: np.ndarray, theta: float, neox: bool, n_rot: int | None = None) -> np.ndarray:
    """Rotary embedding of x (T, H, D) at positions pos (T,).

    neox style rotates pairs (i, i + n_rot/2), normal style pairs (2i, 2i+1); dims past n_rot stay.
    """
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    t, h, d = x.shape
    n_rot = d if n_rot is None else int(n_rot)
    pos = np.ascontiguousarray(pos, dtype=np.int32).reshape(-1)
    b.lib.er_rope(b.ptr(x), b.ptr(pos), t, h, d, n_rot, float(theta), int(bool(neox)))
    return x


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    d = x.shape[-1]
    b.lib.er_softmax(b.ptr(x), x.size // max(d, 1), d)
    return x


def _gate(g: np.ndarray, u: np.ndarray, act: int) -> np.ndarray:
    g, u = b.f32c(g), b.f32c(u)
    out = np.empty_like(g)
    b.lib.er_act_gate(b.ptr(g), b.ptr(u), b.ptr(out), g.size, act)
    return out


def silu_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``silu(g) * u``."""
    return _gate(g, u, ACT["silu"])


def gelu_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``gelu_tanh(g) * u``."""
    return _gate(g, u, ACT["gelu_tanh"])


def add(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a + c`` (same shapes) in float32."""
    a, c = b.f32c(a), b.f32c(c)
    out = np.empty_like(a)
    b.lib.er_add(b.ptr(a), b.ptr(c), b.ptr(out), a.size)
    return out


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """The native float -> half conversion the KV cache writes use (for tests: it must equal numpy's)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.float16)
    b.lib.er_f32_to_f16(b.ptr(x), b.ptr(out), x.size)
    return out


# ------------------------------------------------------------------ fused FFN


_layer_cache: dict[int, tuple] = {}


def layer_args(owner: np.ndarray, sources: tuple, build: Callable[[], tuple[tuple, list]]) -> tuple:
    """The constant ctypes arguments of one layer's fused call, built once per layer.

    `owner` (the layer's first weight) identifies the layer: its other arrays and scalar
    parameters are fixed with it. Like :func:`weight`, an entry holds only weak references to the
    source arrays, so an unloaded model is freed; `build` returns (args, derived), `derived`
    being converted copies whose addresses `args` carry, held while the entry lives. The
    hot path is one dict lookup and one weak-reference check.
    """
    e = _layer_cache.get(id(owner))
    if e is not None and e[0]() is owner:
        return e[1]
    args, derived = build()
    srcs = [a for a in sources if a is not None]
    keep = [c for c in derived if c is not None and not any(c is a for a in srcs)]
    if len(_layer_cache) > 4096:
        _layer_cache.clear()
    try:
        _layer_cache[id(owner)] = (weakref.ref(owner), args, keep)
    except TypeError:  # cannot be weakly referenced: do not cache
        pass
    return args


def ffn(
    x: np.ndarray,
    norm_w: np.ndarray,
    eps: float,
    gate: QTensor,
    up: QTensor,
    down: QTensor,
    act: str = "silu",
) -> np.ndarray:
    """One gated FFN block with residual: ``x + down(act(gate(n)) * up(n))``, ``n = rms_norm(x) * norm_w``."""
    x = b.f32c(x)
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    nb, d = x2.shape

    def build() -> tuple[tuple, list]:
        f = gate.n
        gd, grs = check_weight("er_ffn", int(gate.qtype), gate.data, d)
        ud, urs = check_weight("er_ffn", int(up.qtype), up.data, d)
        dd, drs = check_weight("er_ffn", int(down.qtype), down.data, f)
        nw = b.f32c(norm_w)
        args = (nw.ctypes.data, float(eps), int(gate.qtype), gd.ctypes.data, grs, int(up.qtype),
                ud.ctypes.data, urs, int(down.qtype), dd.ctypes.data, drs, d, f)
        return args, [nw, gd, ud, dd]

    args = layer_args(gate.data, (up.data, down.data, norm_w), build)
    out = np.empty_like(x2)
    rc = b.lib.er_ffn(b.ptr(x2), *args, nb, ACT[act], b.ptr(out))
    if rc:
        raise b.fail(rc, "er_ffn", f"B={nb}, D={d}, F={gate.n}, gate {type_name(gate.qtype)}, "
                                   f"up {type_name(up.qtype)}, down {type_name(down.qtype)}, {act}")
    return out[0] if squeeze else out


# ------------------------------------------------------------------ batch tiles


def tiles_size(qtype: int, n: int, k: int) -> int:
    """Bytes of the batch tiles of an (n, k) weight of this type; 0 when it gets none here."""
    return int(b.lib.er_tiles_size(int(qtype), int(n), int(k)))


def tiles_count() -> int:
    """How many weights have batch tiles registered."""
    return int(b.lib.er_tiles_count())


def _tiles_drop(remove: Callable[[int], int], addr: int, tiles: np.ndarray) -> None:
    # runs when the weight array dies; ``tiles`` was kept alive by this finalizer until now.
    # ``remove`` is the entry point of the library that registered them, even if the binding has
    # since been reloaded or refused: a stale registration would serve tiles for reused memory.
    remove(addr)
    del tiles


def add_tiles(qtype: int, data: np.ndarray, k: int, out: np.ndarray | None = None) -> int:
    """Build the batch tiles of a weight and register them for as long as ``data`` lives.

    The native small-batch kernels then read the tiles instead of decoding ``data`` (same
    results). ``out``: a uint8 buffer of :func:`tiles_size` bytes to build into (e.g. a slice of
    one huge-page mapping), else a new array. Returns the bytes used, 0 when this weight gets no
    tiles."""
    qtype = int(qtype)
    d2, stride = check_weight("er_tiles_make", qtype, data, k)
    if d2 is not data:
        return 0  # a strided weight: its temporary copy would not be what the kernels see
    n = d2.shape[0]
    size = tiles_size(qtype, n, k)
    if not size:
        return 0
    if out is None:
        out = np.empty(size, np.uint8)
    if out.dtype != np.uint8 or out.nbytes != size or not out.flags.c_contiguous:
        raise ValueError(f"tiles buffer must be {size} contiguous bytes")
    addr = d2.ctypes.data
    # a weight the library declines (or a registry slot it cannot get) keeps the row kernels: 0
    if b.lib.er_tiles_make(qtype, addr, stride, n, k, b.ptr(out)):
        return 0
    if b.lib.er_tiles_add(addr, qtype, n, k, stride, b.ptr(out)):
        return 0
    weakref.finalize(data, _tiles_drop, b.lib.er_tiles_remove, addr, out)
    return size


# ------------------------------------------------------------------ threads, ISA and tuning


def isa() -> str:
    """Instruction set the kernels dispatch to ("avx512-vnni", "avx2" or "scalar")."""
    return b.ISA_NAMES[b.lib.er_isa()]


def isa_max() -> str:
    """The best instruction set this machine (and build) offers."""
    return b.ISA_NAMES[b.lib.er_isa_max()]


def set_isa(name: str | None) -> str:
    """Force a lower instruction set (for tests); None restores the best one. Returns the one in use."""
    return b.ISA_NAMES[b.lib.er_set_isa(b.ISA_NAMES.index(name) if name is not None else -1)]


def set_threads(n: int) -> None:
    """Threads used by every kernel (the library's persistent worker pool)."""
    b.lib.er_set_threads(max(1, int(n)))


def get_threads() -> int:
    """Threads the kernels currently use."""
    return int(b.lib.er_get_threads())


def set_pool(on: bool) -> bool:
    """Use the worker pool (True, default) or only the calling thread; returns the old value."""
    return bool(b.lib.er_set_pool(int(bool(on))))


def set_fused(on: bool) -> bool:
    """Enable/disable the fused small-batch kernels (for tests); returns the previous setting."""
    return bool(b.lib.er_set_fused(int(bool(on))))


def set_tile(on: bool) -> bool:
    """Use the 16-row tile kernels for small batches of Q4_0/Q5_0/Q8_0 (default on); returns the old value."""
    return bool(b.lib.er_set_tile(int(on)))


def set_fw0_b2(on: bool) -> bool:
    """Run two-row batches of Q4_0/Q5_0/Q8_0 on the B = 1 pass kernels (default on) rather than the
    16-row tiles; returns the old value."""
    return bool(b.lib.er_set_fw0_b2(int(on)))


def set_fw0(rows: int) -> int:
    """Weight rows per pass of the B = 1 Q4_0/Q5_0/Q8_0 products for rows under 4096 values (default 4;
    0 runs the row-at-a-time kernels); returns the old value."""
    return int(b.lib.er_set_fw0(int(rows)))


def set_tiles(on: bool) -> bool:
    """Use registered batch tiles; returns the previous setting."""
    return bool(b.lib.er_set_tiles(int(on)))


def set_tiles_min_b(rows: int) -> int:
    """Batch tiles serve batches of at least ``rows`` rows; returns the previous value."""
    return int(b.lib.er_set_tiles_min_b(int(rows)))


def set_gemm_tile_bytes(n: int) -> int:
    """Packed-activation bytes per tile of the prefill GEMM (each weight row is decoded once per
    tile); returns the previous value. For tuning and tests: results do not depend on it."""
    return int(b.lib.er_set_gemm_l2(int(n)))


def api_seconds() -> float:
    """Seconds spent inside the native entry points so far (outermost calls only)."""
    return float(b.lib.er_api_seconds())


def call_overhead_noop() -> int:
    """One empty ctypes call (for measuring per-call overhead)."""
    return int(b.lib.er_noop(1))
