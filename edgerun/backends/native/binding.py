"""Loading the native library: ctypes signatures, the ABI check, status codes to exceptions.

The extension module ``edgerun._native`` (built from ``native/``) is an ordinary, empty CPython
extension; its shared object is opened a second time with :class:`ctypes.CDLL` to reach the plain
C entry points declared in ``native/include/edgerun.h``. The library is refused, and
:func:`available` is False with the reason in :func:`load_error`, when it was not built, when
``EDGERUN_NO_NATIVE`` is set, when an entry point is missing (a stale build) or when its
``er_abi_version()`` differs from :data:`ABI_VERSION`. Nothing here falls back: which backend runs
instead is decided, and announced once, by ``edgerun/backends/registry.py``.

The other modules of this package call the library as ``binding.lib.er_*``; while it is not loaded,
``lib`` is a placeholder whose every attribute raises :class:`NativeUnavailableError` with the reason.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

from edgerun.backends.native.errors import NativeError, NativeUnavailableError, status_error

ABI_VERSION = 1  # ER_ABI_VERSION of the native/include/edgerun.h this binding is written for
ISA_NAMES = ("scalar", "avx2", "avx512-vnni")  # er_isa() values 0, 1, 2


class LayerC(ctypes.Structure):
    """Mirror of the C ``er_layer_t``: one layer's constants for ``er_layers`` / ``er_step``.

    Its size is checked against ``er_layer_size()`` when the library loads."""

    _fields_ = ([(n, ctypes.c_void_p) for n in ("attn_norm", "bq", "bk", "bv", "q_norm", "k_norm",
                                                 "post_attn_norm", "wq", "wk", "wv", "wo")]
                + [(n, ctypes.c_int64) for n in ("qt_q", "qt_k", "qt_v", "qt_o", "rb_q", "rb_k", "rb_v",
                                                  "rb_o", "n_heads", "n_kv_heads", "head_dim", "neox",
                                                  "window")]
                + [(n, ctypes.c_double) for n in ("rope_base", "pos_scale", "attn_scale")]
                + [(n, ctypes.c_void_p) for n in ("ffn_norm", "post_ffn_norm", "wg", "wu", "wd")]
                + [(n, ctypes.c_int64) for n in ("qt_g", "qt_u", "qt_d", "rb_g", "rb_u", "rb_d", "ffn_dim",
                                                  "act")])


_vp, _i32, _i64, _f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
# name -> (argument types, result type); an int result of the fallible calls is an er_status
SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "er_abi_version": ([], _i32),
    "er_status_str": ([_i32], ctypes.c_char_p),
    "er_isa": ([], _i32),
    "er_isa_max": ([], _i32),
    "er_set_isa": ([_i32], _i32),
    "er_set_threads": ([_i32], None),
    "er_get_threads": ([], _i32),
    "er_set_fused": ([_i32], _i32),
    "er_set_pool": ([_i32], _i32),
    "er_set_tile": ([_i32], _i32),
    "er_set_fw0": ([_i32], _i32),
    "er_set_fw0_b2": ([_i32], _i32),
    "er_set_tiles": ([_i32], _i32),
    "er_set_tiles_min_b": ([_i32], _i32),
    "er_set_gemm_l2": ([_i64], _i64),
    "er_tiles_size": ([_i32, _i32, _i32], _i64),
    "er_tiles_make": ([_i32, _vp, _i64, _i32, _i32, _vp], _i32),
    "er_tiles_add": ([_vp, _i32, _i32, _i32, _i64, _vp], _i32),
    "er_tiles_remove": ([_vp], _i32),
    "er_tiles_count": ([], _i32),
    "er_noop": ([_i32], _i32),
    "er_api_seconds": ([], ctypes.c_double),
    "er_supports": ([_i32], _i32),
    "er_matmul": ([_i32, _vp, _i64, _i32, _i32, _vp, _i32, _vp], _i32),
    "er_get_rows": ([_i32, _vp, _i64, _i32, _vp, _i32, _vp], _i32),
    "er_rms_norm": ([_vp, _vp, _vp, _i32, _i32, _f32], None),
    "er_rope": ([_vp, _vp, _i32, _i32, _i32, _i32, _f32, _i32], None),
    "er_softmax": ([_vp, _i32, _i32], None),
    "er_act_gate": ([_vp, _vp, _vp, _i64, _i32], None),
    "er_add": ([_vp, _vp, _vp, _i64], None),
    "er_ffn": ([_vp, _vp, _f32, _i32, _vp, _i64, _i32, _vp, _i64, _i32, _vp, _i64, _i32, _i32, _i32, _i32,
                _vp], _i32),
    "er_layer_size": ([], _i64),
    "er_layers": ([_vp, _i32, _vp, _vp, _i32, _vp, _i32, _i32, _f32, _vp, _vp, _vp, _vp, _vp, _i32], _i32),
    "er_f32_to_f16": ([_vp, _vp, _i64], None),
    "er_step": ([_vp, _i32, _vp, _vp, _i32, _i32, _i32, _f32, _vp, _vp, _vp, _vp, _vp, _i32, _i32, _vp, _i64,
                 _vp, _f32, _vp, _i32, _vp, _i64, _i32, _vp, _i32, _vp], _i32),
}


class _Unloaded:
    """Stands in for the library while it is not loaded: any entry point raises, naming why."""

    def __getattr__(self, name: str) -> Any:
        raise NativeUnavailableError(f"{name}: native kernels unavailable ({_load_error})")


lib: Any = _Unloaded()  # the ctypes.CDLL once loaded
_load_error: str | None = "not loaded yet"


def _open() -> ctypes.CDLL:
    from edgerun import _native

    return ctypes.CDLL(_native.__file__)


def load() -> bool:
    """(Re)load the library and check it; returns :func:`available`. Runs at import."""
    global lib, _load_error
    lib, _load_error = _Unloaded(), None
    if os.environ.get("EDGERUN_NO_NATIVE", "") not in ("", "0"):
        _load_error = "disabled by EDGERUN_NO_NATIVE"
        return False
    try:
        handle = _open()
    except (ImportError, OSError) as e:
        _load_error = f"{type(e).__name__}: {e}"
        return False
    try:
        for name, (args, res) in SIGNATURES.items():
            fn = getattr(handle, name)
            fn.argtypes = args
            fn.restype = res
    except AttributeError as e:  # a build from before that entry point existed
        _load_error = f"stale native build, rebuild it with pip install -e . ({e})"
        return False
    abi = int(handle.er_abi_version())
    if abi != ABI_VERSION:
        _load_error = (f"the native library has ABI version {abi}, this binding expects {ABI_VERSION}: "
                       "rebuild it with pip install -e .")
        return False
    if handle.er_layer_size() != ctypes.sizeof(LayerC):
        _load_error = (f"er_layer_t is {handle.er_layer_size()} bytes in the library, "
                       f"{ctypes.sizeof(LayerC)} in the binding: rebuild it with pip install -e .")
        return False
    lib = handle
    return True


def available() -> bool:
    """True when the native library is loaded."""
    return not isinstance(lib, _Unloaded)


def load_error() -> str | None:
    """Why the library is not available (None when it is)."""
    return _load_error


def fail(status: int, fn: str, detail: str = "") -> NativeError:
    """The exception for ``fn`` having returned the non-zero er_status ``status`` (raise it)."""
    raw = lib.er_status_str(int(status))
    return status_error(status, fn, raw.decode() if raw else "unknown native error", detail)


_C0 = ctypes.c_char * 0


def ptr(a: np.ndarray) -> Any:
    """Argument for a ``void *`` parameter: a zero-length ctypes view (cheap) or the integer address."""
    try:
        return _C0.from_buffer(a)
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


def f32c(x: np.ndarray) -> np.ndarray:
    """``x`` as C-contiguous float32 (itself when it already is)."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x


load()
