"""Backend seam: the quantized weight container and the kernel protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class QTensor:
    """A weight in its on-disk quantized block layout.

    ``data`` is uint8 ``(n, row_bytes)`` for every type except F32, which is float32 ``(n, k)``.
    """

    name: str
    qtype: int
    k: int  # input features (GGUF ne[0])
    n: int  # output features (GGUF ne[1])
    data: np.ndarray


class Backend(Protocol):
    """Kernels over :class:`QTensor` weights."""

    name: str

    def supports(self, op: str, qtype: int) -> bool:
        """Whether ``op`` ("matmul" or "get_rows") is implemented for ``qtype``."""
        ...

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        """``x`` (B, K) float32 -> ``x @ W.T`` (B, N) float32."""
        ...

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """Dequantized rows ``ids`` (T,) -> (T, K) float32 (embedding lookup)."""
        ...
