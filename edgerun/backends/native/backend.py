""":class:`NativeBackend`: the Backend protocol and its optional abilities over the native kernels."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numpy as np

from edgerun.backends.base import QTensor, StackModel
from edgerun.backends.native import layers, ops
from edgerun.quant.traits import SUPPORTED

if TYPE_CHECKING:
    from edgerun.models.base import KVCache, SeqBatch


class NativeBackend:
    """Backend over the native C kernels; also FusedFFN, FusedNorm, FusedLayers, FusedStep and
    BatchTiles (:mod:`edgerun.backends.base`). Made by ``registry.make_backend`` when the library
    is loaded."""

    name = "native"

    def __init__(self, n_threads: int | None = None) -> None:
        if n_threads is not None:
            ops.set_threads(n_threads)
        self._tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def supports(self, op: str, qtype: int) -> bool:
        """matmul / get_rows / ffn for every type of :data:`edgerun.quant.traits.SUPPORTED`."""
        return op in ("matmul", "get_rows", "ffn") and int(qtype) in SUPPORTED

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        """x (B, K) float32 -> (B, N) float32."""
        return ops.matmul(w.qtype, w.data, x)

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """ids (T,) -> (T, K) float32."""
        return ops.get_rows(w.qtype, w.data, ids, w.k)

    def ffn(self, x: np.ndarray, norm_w: np.ndarray, eps: float, gate: QTensor, up: QTensor, down: QTensor,
            act: str = "silu") -> np.ndarray:
        """One FFN block with norm and residual in one call; see :func:`ops.ffn`."""
        return ops.ffn(x, norm_w, eps, gate, up, down, act)

    def rms_norm(self, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """Row-wise RMS norm times ``w``."""
        return ops.rms_norm(x, w, eps)

    def run_layers(self, model: StackModel, x: np.ndarray, batch: SeqBatch, kv: KVCache) -> np.ndarray:
        """All layers of one step in one call; see :func:`layers.run_layers`."""
        return layers.run_layers(model, x, batch, kv, self._tables)

    def run_step(self, model: StackModel, batch: SeqBatch, kv: KVCache, sel: np.ndarray) -> np.ndarray:
        """A whole step (embedding, layers, final norm, head) in one call; see :func:`layers.run_step`."""
        return layers.run_step(model, batch, kv, sel, self._tables)

    def tiles_size(self, w: QTensor) -> int:
        """Bytes of the batch tiles of ``w``; 0 when it gets none."""
        return ops.tiles_size(w.qtype, w.n, w.k)

    def add_tiles(self, w: QTensor, data: np.ndarray, out: np.ndarray | None = None) -> int:
        """Build and register the batch tiles of ``w`` (rows ``data``) while ``data`` lives."""
        return ops.add_tiles(w.qtype, data, w.k, out)

    def set_threads(self, n: int) -> None:
        """Thread count for the kernels."""
        ops.set_threads(n)
