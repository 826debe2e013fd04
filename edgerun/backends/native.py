"""ctypes binding of the native C kernels (``edgerun/_native*.so``, built from ``native/``).

The extension module is an ordinary (empty) CPython extension; its shared object is loaded a second
time with :class:`ctypes.CDLL` to reach the plain C entry points. When it cannot be loaded (no
compiler at install time, or ``EDGERUN_NO_NATIVE=1``) :func:`available` is False and every function
here answers through the Numba kernels / numpy instead, after one warning line.
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from edgerun.backends.base import QTensor

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
SUPPORTED: frozenset[int] = frozenset((F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K))
_BLOCK = {
    F32: (1, 4),
    F16: (1, 2),
    BF16: (1, 2),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q5_0: (32, 22),
    Q5_1: (32, 24),
    Q8_0: (32, 34),
    Q4_K: (256, 144),
    Q5_K: (256, 176),
    Q6_K: (256, 210),
}
ISA_NAMES = ("scalar", "avx2", "avx512-vnni")
ACT = {"silu": 0, "gelu": 1, "gelu_tanh": 1}

_lib: ctypes.CDLL | None = None
_load_error: str | None = None
_warned = False


class LayerC(ctypes.Structure):
    """Mirror of ``er_layer_t`` (native/attn_block.h): one layer's constants for ``er_layers``."""

    _fields_ = ([(n, ctypes.c_void_p) for n in ("attn_norm", "bq", "bk", "bv", "q_norm", "k_norm",
                                                 "post_attn_norm", "wq", "wk", "wv", "wo")]
                + [(n, ctypes.c_int64) for n in ("qt_q", "qt_k", "qt_v", "qt_o", "rb_q", "rb_k", "rb_v",
                                                  "rb_o", "n_heads", "n_kv_heads", "head_dim", "neox",
                                                  "window")]
                + [(n, ctypes.c_double) for n in ("rope_base", "pos_scale", "attn_scale")]
                + [(n, ctypes.c_void_p) for n in ("ffn_norm", "post_ffn_norm", "wg", "wu", "wd")]
                + [(n, ctypes.c_int64) for n in ("qt_g", "qt_u", "qt_d", "rb_g", "rb_u", "rb_d", "ffn_dim",
                                                  "act")])


def _load() -> None:
    global _lib, _load_error
    if os.environ.get("EDGERUN_NO_NATIVE", "") not in ("", "0"):
        _load_error = "disabled by EDGERUN_NO_NATIVE"
        return
    try:
        from edgerun import _native

        lib = ctypes.CDLL(_native.__file__)
    except (ImportError, OSError) as e:
        _load_error = f"{type(e).__name__}: {e}"
        return
    vp, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    sig = {
        "er_isa": ([], i32),
        "er_isa_max": ([], i32),
        "er_set_isa": ([i32], i32),
        "er_set_threads": ([i32], None),
        "er_set_fused": ([i32], i32),
        "er_set_pool": ([i32], i32),
        "er_set_tile": ([i32], i32),
        "er_set_fw0": ([i32], i32),
        "er_set_fw0_b2": ([i32], i32),
        "er_set_tiles": ([i32], i32),
        "er_set_tiles_min_b": ([i32], i32),
        "er_set_gemm_l2": ([i64], i64),
        "er_tiles_size": ([i32, i32, i32], i64),
        "er_tiles_make": ([i32, vp, i64, i32, i32, vp], i32),
        "er_tiles_add": ([vp, i32, i32, i32, i64, vp], i32),
        "er_tiles_remove": ([vp], i32),
        "er_tiles_count": ([], i32),
        "er_get_threads": ([], i32),
        "er_noop": ([i32], i32),
        "er_api_seconds": ([], ctypes.c_double),
        "er_supports": ([i32], i32),
        "er_matmul": ([i32, vp, i64, i32, i32, vp, i32, vp], i32),
        "er_get_rows": ([i32, vp, i64, i32, vp, i32, vp], i32),
        "er_rms_norm": ([vp, vp, vp, i32, i32, f32], None),
        "er_rope": ([vp, vp, i32, i32, i32, i32, f32, i32], None),
        "er_softmax": ([vp, i32, i32], None),
        "er_act_gate": ([vp, vp, vp, i64, i32], None),
        "er_add": ([vp, vp, vp, i64], None),
        "er_ffn": ([vp, vp, f32, i32, vp, i64, i32, vp, i64, i32, vp, i64, i32, i32, i32, i32, vp], i32),
        "er_layer_size": ([], i64),
        "er_layers": ([vp, i32, vp, vp, i32, vp, i32, i32, f32, vp, vp, vp, vp, vp, i32], i32),
        "er_f32_to_f16": ([vp, vp, i64], None),
        "er_step": ([vp, i32, vp, vp, i32, i32, i32, f32, vp, vp, vp, vp, vp, i32, i32, vp, i64, vp, f32, vp,
                     i32, vp, i64, i32, vp, i32, vp], i32),
    }
    try:
        for name, (args, res) in sig.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = res
    except AttributeError as e:  # a stale build of the library
        _load_error = f"stale native build, rebuild with setup.py build_ext ({e})"
        return
    if lib.er_layer_size() != ctypes.sizeof(LayerC):
        _load_error = "stale native build (layer struct size differs), rebuild with setup.py build_ext"
        return
    _lib = lib


_load()


def available() -> bool:
    """True when the native library is loaded."""
    return _lib is not None


def load_error() -> str | None:
    """Why the library is not available (None when it is)."""
    return _load_error


def _fallback_warn() -> None:
    global _warned
    if not _warned:
        print(f"edgerun: native kernels unavailable ({_load_error}), using Numba/numpy", file=sys.stderr)
        _warned = True


def isa() -> str:
    """Instruction set the kernels dispatch to ("avx512-vnni", "avx2" or "scalar")."""
    return ISA_NAMES[_lib.er_isa()] if _lib is not None else "none"


def set_isa(name: str | None) -> str:
    """Force a lower instruction set (for tests); None restores the best one. Returns the one in use."""
    if _lib is None:
        return "none"
    return ISA_NAMES[_lib.er_set_isa(ISA_NAMES.index(name) if name is not None else -1)]


def set_fused(on: bool) -> bool:
    """Enable/disable the fused small-batch kernels (for tests); returns the previous setting."""
    return bool(_lib.er_set_fused(int(bool(on)))) if _lib is not None else False


def set_tile(on: bool) -> bool:
    """Use the 16-row tile kernels for small batches of Q4_0/Q5_0/Q8_0 (default on); returns the old value."""
    return bool(_lib.er_set_tile(int(on))) if _lib is not None else False


def set_fw0_b2(on: bool) -> bool:
    """Run two-row batches of Q4_0/Q5_0/Q8_0 on the B = 1 pass kernels (default on) rather than the
    16-row tiles; returns the old value."""
    return bool(_lib.er_set_fw0_b2(int(on))) if _lib is not None else False


def set_fw0(rows: int) -> int:
    """Weight rows per pass of the B = 1 Q4_0/Q5_0/Q8_0 products for rows under 4096 values (default 4;
    0 runs the row-at-a-time kernels); returns the old value."""
    return int(_lib.er_set_fw0(int(rows))) if _lib is not None else 0


def set_pool(on: bool) -> bool:
    """Use the worker pool (True, default) or only the calling thread; returns the old value."""
    return bool(_lib.er_set_pool(int(bool(on)))) if _lib is not None else False


def set_threads(n: int) -> None:
    """Threads used by every kernel (one persistent OpenMP pool)."""
    if _lib is not None:
        _lib.er_set_threads(max(1, int(n)))
    else:
        from edgerun.backends import numba_cpu

        numba_cpu.set_threads(n)


def get_threads() -> int:
    if _lib is not None:
        return int(_lib.er_get_threads())
    from edgerun.backends import numba_cpu

    return numba_cpu.get_threads()


_C0 = ctypes.c_char * 0


def _ptr(a: np.ndarray):
    """Argument for a ``void *`` parameter: a zero-length ctypes view (cheap) or the integer address."""
    try:
        return _C0.from_buffer(a)
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


_wcache: dict[int, tuple] = {}


def _weight(qtype: int, data: np.ndarray, k: int) -> tuple[object, int, int]:
    """(pointer, row stride, rows) of a validated weight, cached per weight array."""
    e = _wcache.get(id(data))
    if e is not None and e[0]() is data and e[1] == qtype and e[2] == k:
        return e[3], e[4], e[5]
    d2, stride = _check_w(qtype, data, k)
    ptr = d2.ctypes.data
    if d2 is data:
        if len(_wcache) > 4096:
            _wcache.clear()
        try:
            _wcache[id(data)] = (weakref.ref(data), qtype, k, ptr, stride, d2.shape[0])
        except TypeError:
            pass
        return ptr, stride, d2.shape[0]
    return _ptr(d2), stride, d2.shape[0]  # a temporary copy: no caching, the view keeps it alive


def _f32c(x: np.ndarray) -> np.ndarray:
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x


def _check_w(qtype: int, data: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    if qtype not in SUPPORTED:
        raise ValueError(f"native backend: unsupported quant type {qtype}")
    bs, ts = _BLOCK[qtype]
    if k % bs:
        raise ValueError(f"K={k} is not a multiple of the block size {bs} of type {qtype}")
    rb = k // bs * ts
    if qtype == F32:
        if data.dtype != np.float32 or data.ndim != 2 or data.shape[1] != k:
            raise ValueError(f"F32 weight must be float32 (N, {k}), got {data.dtype} {data.shape}")
    elif data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != rb:
        raise ValueError(
            f"weight of type {qtype} must be uint8 (N, {rb}) for K={k}, got {data.dtype} {data.shape}"
        )
    if data.strides[1] != data.itemsize:
        data = np.ascontiguousarray(data)
    return data, data.strides[0]


def matmul(qtype: int, data: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x @ W.T``: x (B, K) float32 (or (K,)), W (N, row_bytes) uint8 / (N, K) float32 -> (B, N) float32."""
    if _lib is None:
        _fallback_warn()
        from edgerun.backends import numba_cpu

        return numba_cpu.matmul(qtype, data, x)
    x = _f32c(x)
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    b, k = x2.shape
    qtype = int(qtype)
    wp, rstride, n = _weight(qtype, data, k)
    out = np.empty((b, n), np.float32)
    if b and n:
        rc = _lib.er_matmul(qtype, wp, rstride, n, k, _ptr(x2), b, _ptr(out))
        if rc:
            raise RuntimeError(f"er_matmul failed ({rc})")
    return out[0] if squeeze else out


def set_tiles(on: bool) -> bool:
    """Use registered batch tiles (native/tiles.h); returns the previous setting."""
    return bool(_lib.er_set_tiles(int(on))) if _lib is not None else False


def set_tiles_min_b(b: int) -> int:
    """Batch tiles serve batches of at least ``b`` rows; returns the previous value."""
    return int(_lib.er_set_tiles_min_b(int(b))) if _lib is not None else 0


def set_gemm_tile_bytes(n: int) -> int:
    """Packed-activation bytes per tile of the prefill GEMM (each weight row is decoded once per
    tile); returns the previous value. For tuning and tests: results do not depend on it."""
    return int(_lib.er_set_gemm_l2(int(n))) if _lib is not None else 0


def tiles_size(qtype: int, n: int, k: int) -> int:
    """Bytes of the batch tiles of an (n, k) weight of this type; 0 when it gets none here."""
    return int(_lib.er_tiles_size(int(qtype), int(n), int(k))) if _lib is not None else 0


def tiles_count() -> int:
    """How many weights have batch tiles registered."""
    return int(_lib.er_tiles_count()) if _lib is not None else 0


def _tiles_drop(ptr: int, tiles: np.ndarray) -> None:
    # runs when the weight array dies; ``tiles`` was kept alive by this finalizer until now
    if _lib is not None:
        _lib.er_tiles_remove(ptr)
    del tiles


def add_tiles(qtype: int, data: np.ndarray, k: int, out: np.ndarray | None = None) -> int:
    """Build the batch tiles of a weight and register them for as long as ``data`` lives.

    The native small-batch kernels then read the tiles instead of decoding ``data`` (same
    results; see native/tiles.h). ``out``: a uint8 buffer of :func:`tiles_size` bytes to build
    into (e.g. a slice of one huge-page mapping), else a new array. Returns the bytes used, 0
    when this weight gets no tiles."""
    if _lib is None:
        return 0
    qtype = int(qtype)
    d2, stride = _check_w(qtype, data, k)
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
    ptr = d2.ctypes.data
    if _lib.er_tiles_make(qtype, ptr, stride, n, k, _ptr(out)):
        return 0
    if _lib.er_tiles_add(ptr, qtype, n, k, stride, _ptr(out)):
        return 0
    weakref.finalize(data, _tiles_drop, ptr, out)
    return size


def get_rows(qtype: int, data: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Rows ``ids`` (T,) of a weight, dequantized -> (T, K) float32."""
    if _lib is None:
        _fallback_warn()
        from edgerun.backends import numba_cpu

        return numba_cpu.get_rows(qtype, data, ids, k)
    data, rstride = _check_w(int(qtype), data, k)
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= data.shape[0]):
        raise IndexError(f"row id out of range [0, {data.shape[0]})")
    out = np.empty((ids.shape[0], k), np.float32)
    if ids.size and k:
        rc = _lib.er_get_rows(int(qtype), _ptr(data), rstride, k, _ptr(ids), ids.shape[0], _ptr(out))
        if rc:
            raise RuntimeError(f"er_get_rows failed ({rc})")
    return out


# ------------------------------------------------------------------ light ops (numpy fallbacks)


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """Row-wise ``x / sqrt(mean(x^2) + eps) * w`` over the last axis."""
    x = _f32c(x)
    if _lib is None:
        y = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + eps).astype(np.float32)
        return y * w if w is not None else y
    d = x.shape[-1]
    out = np.empty_like(x)
    wp = None
    if w is not None:
        w = _f32c(w)
        wp = _ptr(w)
    _lib.er_rms_norm(_ptr(x), wp, _ptr(out), x.size // max(d, 1), d, float(eps))
    return out


def rope(x: np.ndarray, pos: np.ndarray, theta: float, neox: bool, n_rot: int | None = None) -> np.ndarray:
    """Rotary embedding of x (T, H, D) at positions pos (T,).

    neox style rotates pairs (i, i + n_rot/2), normal style pairs (2i, 2i+1); dims past n_rot stay.
    """
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    t, h, d = x.shape
    n_rot = d if n_rot is None else int(n_rot)
    pos = np.ascontiguousarray(pos, dtype=np.int32).reshape(-1)
    if _lib is None:
        half = n_rot // 2
        inv = float(theta) ** (-2.0 * np.arange(half) / n_rot)
        ang = pos[:, None].astype(np.float64) * inv[None, :]
        c = np.cos(ang).astype(np.float32)[:, None, :]
        s = np.sin(ang).astype(np.float32)[:, None, :]
        i0 = np.arange(half) if neox else 2 * np.arange(half)
        i1 = i0 + half if neox else i0 + 1
        a, b = x[..., i0].copy(), x[..., i1].copy()
        x[..., i0] = a * c - b * s
        x[..., i1] = a * s + b * c
        return x
    _lib.er_rope(_ptr(x), _ptr(pos), t, h, d, n_rot, float(theta), int(bool(neox)))
    return x


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if _lib is None:
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    d = x.shape[-1]
    _lib.er_softmax(_ptr(x), x.size // max(d, 1), d)
    return x


def _gate(g: np.ndarray, u: np.ndarray, act: int) -> np.ndarray:
    g, u = _f32c(g), _f32c(u)
    if _lib is None:
        if act == 0:
            return g / (1.0 + np.exp(-g)) * u
        return 0.5 * g * (1.0 + np.tanh(0.7978845608028654 * (g + 0.044715 * g**3))) * u
    out = np.empty_like(g)
    _lib.er_act_gate(_ptr(g), _ptr(u), _ptr(out), g.size, act)
    return out


def silu_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``silu(g) * u``."""
    return _gate(g, u, 0)


def gelu_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``gelu_tanh(g) * u``."""
    return _gate(g, u, 1)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _f32c(a), _f32c(b)
    if _lib is None:
        return a + b
    out = np.empty_like(a)
    _lib.er_add(_ptr(a), _ptr(b), _ptr(out), a.size)
    return out


_layer_cache: dict[tuple, tuple] = {}


def _layer_args(owner: np.ndarray, sources: tuple, build: Callable[[], tuple[tuple, list]]) -> tuple:
    """The constant ctypes arguments of one layer's fused call, built once per layer.

    `owner` (the layer's first weight) identifies the layer: its other arrays and scalar
    parameters are fixed with it. Like `_weight`, an entry holds only weak references to the
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
    x = _f32c(x)
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    if _lib is None:
        n = rms_norm(x2, norm_w, eps)
        h = _gate(matmul(gate.qtype, gate.data, n), matmul(up.qtype, up.data, n), ACT[act])
        out = x2 + matmul(down.qtype, down.data, h)
        return out[0] if squeeze else out
    b, d = x2.shape

    def build() -> tuple[tuple, list]:
        f = gate.n
        gd, grs = _check_w(int(gate.qtype), gate.data, d)
        ud, urs = _check_w(int(up.qtype), up.data, d)
        dd, drs = _check_w(int(down.qtype), down.data, f)
        nw = _f32c(norm_w)
        args = (nw.ctypes.data, float(eps), int(gate.qtype), gd.ctypes.data, grs, int(up.qtype),
                ud.ctypes.data, urs, int(down.qtype), dd.ctypes.data, drs, d, f)
        return args, [nw, gd, ud, dd]

    args = _layer_args(gate.data, (up.data, down.data, norm_w), build)
    out = np.empty_like(x2)
    rc = _lib.er_ffn(_ptr(x2), *args, b, ACT[act], _ptr(out))
    if rc:
        raise RuntimeError(f"er_ffn failed ({rc})")
    return out[0] if squeeze else out


def _layer_table(model: Any) -> tuple[ctypes.Array, list]:
    """The ``er_layer_t`` array of a model's layers and the arrays its pointers need kept alive."""
    a = model.args
    table = (LayerC * len(model.layers))()
    keep: list = []

    def vec(v: np.ndarray | None) -> int | None:
        if v is None:
            return None
        v = _f32c(v)
        keep.append(v)
        return v.ctypes.data

    def mat(w: QTensor, k: int, n: int) -> tuple[int, int]:
        if w.k != k or w.n != n:
            raise ValueError(f"{w.name}: shape ({w.n}, {w.k}) does not fit its layer, expected ({n}, {k})")
        d, stride = _check_w(int(w.qtype), w.data, k)
        keep.append(d)
        return d.ctypes.data, stride

    d, qd, kd = a.dim, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    for i, ly in enumerate(model.layers):
        e = table[i]
        for name in ("attn_norm", "bq", "bk", "bv", "q_norm", "k_norm", "post_attn_norm", "ffn_norm",
                     "post_ffn_norm"):
            setattr(e, name, vec(getattr(ly, name)))
        for tag, w, k, n in (("q", ly.wq, d, qd), ("k", ly.wk, d, kd), ("v", ly.wv, d, kd),
                             ("o", ly.wo, qd, d), ("g", ly.w_gate, d, a.ffn_dim),
                             ("u", ly.w_up, d, a.ffn_dim), ("d", ly.w_down, a.ffn_dim, d)):
            ptr, stride = mat(w, k, n)
            setattr(e, "w" + tag, ptr)
            setattr(e, "qt_" + tag, int(w.qtype))
            setattr(e, "rb_" + tag, stride)
        e.n_heads, e.n_kv_heads, e.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        e.neox, e.window = int(bool(a.rope_neox)), int(a.windows[i])
        e.rope_base, e.pos_scale, e.attn_scale = a.rope_bases[i], a.rope_pos_scales[i], a.attn_scale
        e.ffn_dim, e.act = a.ffn_dim, ACT[a.activation]
    return table, keep


def _kv_pointers(kv: Any, cache: dict | None) -> tuple[np.ndarray, np.ndarray]:
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


def _stack_args(model: Any, batch: Any, kv: Any, cache: dict | None) -> tuple:
    """The layer-stack arguments shared by er_layers and er_step, from the cached layer table.

    ``cache`` (a dict owned by the caller, e.g. a weak-keyed one per model) keeps the layer table
    between steps; it is rebuilt when the model's weight arrays were replaced (the old ones stay
    alive with the old table, so a stale entry can never point at freed memory).
    """
    if _lib is None:
        raise RuntimeError("native library not loaded")
    layers = model.layers
    # weights are replaced all together (runtime/weights.py), so the first and last identify them
    key = (len(layers), id(layers[0].wq.data), id(layers[-1].w_down.data))
    hit = cache.get(model) if cache is not None else None
    if hit is None or hit[0] != key:
        hit = (key, *_layer_table(model))
        if cache is not None:
            cache[model] = hit
    kc, vc = _kv_pointers(kv, cache)
    f16 = int(kv.k[0].dtype == np.float16)
    return (ctypes.addressof(hit[1]), len(layers), _ptr(kc), _ptr(vc), f16), batch.flat()


def run_layers(model: Any, x: np.ndarray, batch: Any, kv: Any, cache: dict | None = None) -> np.ndarray:
    """Every layer of a CPU-only step in one native call: x (T, D) -> x after the last layer."""
    head, f = _stack_args(model, batch, kv, cache)
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    t, d = out.shape
    eps = float(model.args.norm_eps)
    rc = _lib.er_layers(*head, _ptr(out), t, d, eps, _ptr(f["pos"]), _ptr(f["write_slots"]),
                        _ptr(f["tok_seq"]), _ptr(f["read_slots"]), _ptr(f["read_off"]), int(f["max_ctx"]))
    if rc:
        raise RuntimeError(f"er_layers failed ({rc})")
    return out


def run_step(model: Any, batch: Any, kv: Any, sel: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """A whole CPU-only step in one native call: embedding rows of ``batch.tokens``, every layer, the
    final norm and the output head for batch rows ``sel`` -> logits (len(sel), vocab).

    Token ids must be in range (the runner checks them)."""
    head, f = _stack_args(model, batch, kv, cache)
    a = model.args
    emb, out_w = model.tok_embd, model.output
    ep, es, _ = _weight(int(emb.qtype), emb.data, emb.k)
    op, os_, n_vocab = _weight(int(out_w.qtype), out_w.data, out_w.k)
    tokens = np.ascontiguousarray(batch.tokens, dtype=np.int64)
    sel = np.ascontiguousarray(sel, dtype=np.int64)
    norm = _f32c(model.out_norm)
    logits = np.empty((len(sel), n_vocab), np.float32)
    rc = _lib.er_step(*head, len(tokens), a.dim, float(a.norm_eps), _ptr(f["pos"]), _ptr(f["write_slots"]),
                      _ptr(f["tok_seq"]), _ptr(f["read_slots"]), _ptr(f["read_off"]), int(f["max_ctx"]),
                      int(emb.qtype), ep, es, _ptr(tokens), float(a.embed_scale), _ptr(norm),
                      int(out_w.qtype), op, os_, n_vocab, _ptr(sel), len(sel), _ptr(logits))
    if rc:
        raise RuntimeError(f"er_step failed ({rc})")
    return logits


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """The native float -> half conversion the KV cache writes use (for tests: it must equal numpy's)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.float16)
    _lib.er_f32_to_f16(_ptr(x), _ptr(out), x.size)
    return out


def api_seconds() -> float:
    """Seconds spent inside the native entry points so far (outermost calls only)."""
    return float(_lib.er_api_seconds()) if _lib is not None else 0.0


def call_overhead_noop() -> int:
    """One empty ctypes call (for measuring per-call overhead)."""
    return _lib.er_noop(1) if _lib is not None else 1


class NativeBackend:
    """:class:`~edgerun.backends.base.Backend` over the native C kernels."""

    name = "native"

    def __init__(self, n_threads: int | None = None) -> None:
        if n_threads is not None:
            set_threads(n_threads)
        self._tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def supports(self, op: str, qtype: int) -> bool:
        """matmul / get_rows for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; plus ffn."""
        return op in ("matmul", "get_rows", "ffn") and int(qtype) in SUPPORTED

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        """x (B, K) float32 -> (B, N) float32."""
        return matmul(w.qtype, w.data, x)

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """ids (T,) -> (T, K) float32."""
        return get_rows(w.qtype, w.data, ids, w.k)

    def ffn(
        self,
        x: np.ndarray,
        norm_w: np.ndarray,
        eps: float,
        gate: QTensor,
        up: QTensor,
        down: QTensor,
        act: str = "silu",
    ) -> np.ndarray:
        return ffn(x, norm_w, eps, gate, up, down, act)

    def rms_norm(self, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """Row-wise RMS norm times ``w``."""
        return rms_norm(x, w, eps)

    def run_layers(self, model: Any, x: np.ndarray, batch: Any, kv: Any) -> np.ndarray:
        """All layers of one step in one call; see :func:`run_layers`."""
        return run_layers(model, x, batch, kv, self._tables)

    def run_step(self, model: Any, batch: Any, kv: Any, sel: np.ndarray) -> np.ndarray:
        """A whole step (embedding, layers, final norm, head) in one call; see :func:`run_step`."""
        return run_step(model, batch, kv, sel, self._tables)

    def set_threads(self, n: int) -> None:
        """Thread count for the kernels."""
        set_threads(n)
