"""Backend seam: the quantized weight container, the kernel protocol and the optional abilities.

Every CPU backend implements :class:`Backend`. What only some have (a fused FFN, a fused norm,
the whole layer stack or step in one call, batch tiles) is a ``runtime_checkable`` protocol of its
own; callers ask ``implements(backend, FusedFFN)`` and never probe attribute names. The answer is
a structural ``issubclass`` of the backend's class, cached per class: the forward pass asks on
every step (and the hybrid runner per layer), where a runtime-checkable ``isinstance`` costs
17-32 us on Python 3.11. A subclass opts out of an ability by setting the method to None
(``class LayersOnly(NativeBackend): run_step = None``; the tests compare paths that way).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeGuard, TypeVar, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from edgerun.models.base import KVCache, Layer, ModelArgs, SeqBatch


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


@runtime_checkable
class Backend(Protocol):
    """Kernels over :class:`QTensor` weights."""

    name: str

    def supports(self, op: str, qtype: int) -> bool:
        """Whether ``op`` ("matmul", "get_rows", or an ability such as "ffn") is implemented for ``qtype``."""
        ...

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        """``x`` (B, K) float32 -> ``x @ W.T`` (B, N) float32."""
        ...

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """Dequantized rows ``ids`` (T,) -> (T, K) float32 (embedding lookup)."""
        ...

    def set_threads(self, n: int) -> None:
        """Worker threads of the kernels."""
        ...


class StackModel(Protocol):
    """What the one-call layer stack reads of a model (``edgerun.models.base.Transformer``)."""

    args: ModelArgs
    layers: Sequence[Layer]
    tok_embd: QTensor
    output: QTensor
    out_norm: np.ndarray


@runtime_checkable
class FusedFFN(Protocol):
    """A whole FFN block with its norm and residual in one call."""

    def ffn(self, x: np.ndarray, norm_w: np.ndarray, eps: float, gate: QTensor, up: QTensor, down: QTensor,
            act: str = "silu") -> np.ndarray:
        """``x + down(act(gate(n)) * up(n))``, ``n = rms_norm(x) * norm_w``; x (B, D) -> (B, D)."""
        ...


@runtime_checkable
class FusedNorm(Protocol):
    """Its own RMS norm (the models' numpy one otherwise)."""

    def rms_norm(self, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """Row-wise ``x / sqrt(mean(x^2) + eps) * w`` over the last axis."""
        ...


@runtime_checkable
class FusedLayers(Protocol):
    """Every layer of a step (attention blocks and FFNs) in one call."""

    def run_layers(self, model: StackModel, x: np.ndarray, batch: SeqBatch, kv: KVCache) -> np.ndarray:
        """x (T, D) after the embedding -> x (T, D) after the last layer."""
        ...


@runtime_checkable
class FusedStep(Protocol):
    """A whole step in one call: embedding rows, every layer, final norm and output head."""

    def run_step(self, model: StackModel, batch: SeqBatch, kv: KVCache, sel: np.ndarray) -> np.ndarray:
        """Logits (len(sel), vocab) of batch rows ``sel``."""
        ...


@runtime_checkable
class BatchTiles(Protocol):
    """Keeps a second, batch-friendly copy ("tiles") of weights for multi-sequence steps."""

    def tiles_size(self, w: QTensor) -> int:
        """Bytes of ``w``'s tiles; 0 when it gets none."""
        ...

    def add_tiles(self, w: QTensor, data: np.ndarray, out: np.ndarray | None = None) -> int:
        """Build and register the tiles of ``w`` whose rows are ``data``; returns the bytes used."""
        ...


_A = TypeVar("_A")


@functools.cache
def _class_implements(cls: type, ability: type) -> bool:
    return issubclass(cls, ability)


def implements(backend: object, ability: type[_A]) -> TypeGuard[_A]:
    """Whether ``backend`` has the optional ``ability`` (one of the runtime-checkable protocols
    above), decided by its class."""
    return _class_implements(type(backend), ability)
