"""Reference backend: weights dequantized once with `gguf.quants.dequantize`, f32 numpy matmuls.

Slow and memory-hungry (4 bytes per weight); it is the oracle for the fast backends.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from edgerun.backends.base import QTensor


def dequantize_tensor(w: QTensor) -> np.ndarray:
    """(N, K) float32 of any supported type."""
    if w.data.dtype == np.float32:
        return w.data.reshape(w.n, w.k)
    return dequantize(np.asarray(w.data), GGMLQuantizationType(w.qtype)).reshape(w.n, w.k).astype(np.float32)


class ReferenceBackend:
    name = "reference"

    def __init__(self) -> None:
        self._cache: dict[int, np.ndarray] = {}

    def supports(self, op: str, qtype: int) -> bool:
        return op in ("matmul", "get_rows")

    def _w(self, w: QTensor) -> np.ndarray:
        key = id(w.data)
        if key not in self._cache:
            self._cache[key] = dequantize_tensor(w)
        return self._cache[key]

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32) @ self._w(w).T

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if w.data.dtype == np.float32:
            return w.data[ids].astype(np.float32)
        rows = np.asarray(w.data[ids])
        return dequantize(rows, GGMLQuantizationType(w.qtype)).reshape(len(ids), w.k).astype(np.float32)

    def set_threads(self, n: int) -> None:
        pass
