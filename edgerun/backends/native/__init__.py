"""The native C kernels (``edgerun/_native*.so``, built from ``native/``), bound with ctypes.

- :mod:`.binding`: loading, signatures, the ABI check, ``available()`` / ``load_error()``;
- :mod:`.errors`: ``er_status`` codes and the :class:`NativeError` family they raise;
- :mod:`.ops`: the typed operations (matmul, get_rows, fused FFN, light ops, batch tiles, tuning);
- :mod:`.layers`: the ``er_layer_t`` table and the one-call layer stack / step;
- :mod:`.backend`: :class:`NativeBackend`.

Everything needs the library loaded; nothing here falls back to another backend (that choice is
``edgerun.backends.registry``'s). The names below are the package's public surface.
"""

from edgerun.backends.native.backend import NativeBackend
from edgerun.backends.native.binding import ABI_VERSION, ISA_NAMES, available, load_error
from edgerun.backends.native.errors import (
    NativeArgumentError,
    NativeError,
    NativeMemoryError,
    NativeShapeError,
    NativeUnavailableError,
    NativeUnsupportedError,
    Status,
)
from edgerun.backends.native.layers import layer_table, run_layers, run_step
from edgerun.backends.native.ops import (
    ACT,
    add,
    add_tiles,
    api_seconds,
    call_overhead_noop,
    f32_to_f16,
    ffn,
    gelu_gate,
    get_rows,
    get_threads,
    isa,
    isa_max,
    matmul,
    rms_norm,
    rope,
    set_fused,
    set_fw0,
    set_fw0_b2,
    set_gemm_tile_bytes,
    set_isa,
    set_pool,
    set_threads,
    set_tile,
    set_tiles,
    set_tiles_min_b,
    silu_gate,
    softmax,
    tiles_count,
    tiles_size,
)

__all__ = [
    "ABI_VERSION",
    "ACT",
    "ISA_NAMES",
    "NativeArgumentError",
    "NativeBackend",
    "NativeError",
    "NativeMemoryError",
    "NativeShapeError",
    "NativeUnavailableError",
    "NativeUnsupportedError",
    "Status",
    "add",
    "add_tiles",
    "api_seconds",
    "available",
    "call_overhead_noop",
    "f32_to_f16",
    "ffn",
    "gelu_gate",
    "get_rows",
    "get_threads",
    "isa",
    "isa_max",
    "layer_table",
    "load_error",
    "matmul",
    "rms_norm",
    "rope",
    "run_layers",
    "run_step",
    "set_fused",
    "set_fw0",
    "set_fw0_b2",
    "set_gemm_tile_bytes",
    "set_isa",
    "set_pool",
    "set_threads",
    "set_tile",
    "set_tiles",
    "set_tiles_min_b",
    "silu_gate",
    "softmax",
    "tiles_count",
    "tiles_size",
]
