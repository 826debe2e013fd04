"""Runner: a batch of sequences -> logits, over a paged KV cache.

The runner owns the model, its backend and the KV storage. It knows nothing of
scheduling: callers (the serving engine, the single-sequence generator) say which cache
blocks each sequence owns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerun.backends.base import BatchTiles, implements
from edgerun.backends.registry import make_backend
from edgerun.models.base import KVCache, SeqBatch, Transformer
from edgerun.models.registry import model_class
from edgerun.quant.gguf_file import GGUFFile
from edgerun.runtime.weights import PinJob
from edgerun.text.tokenizer import Tokenizer


@dataclass
class SeqInput:
    tokens: np.ndarray  # int32 (T,) new tokens of this sequence for this step
    start_pos: int  # tokens already in the KV cache
    block_table: np.ndarray  # int32 block ids covering positions [0, start_pos + T)
    want_all_logits: bool = False


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Runner:
    """Loads a GGUF model and runs batched forward steps over a paged KV cache."""

    #: move the CPU's weights into huge pages once the model is built (see runtime/weights.py)
    pin_weights_at_init = True

    def __init__(self, model: str | os.PathLike | GGUFFile, n_ctx: int = 4096, n_threads: int | None = None,
                 num_blocks: int | None = None, block_size: int = 16, backend: str = "auto",
                 kv_type: str = "f16", batch_tiles: bool = False) -> None:
        """``model`` is a path, or a GGUFFile already parsed (the factory's, so the file is read once)."""
        if n_ctx <= 0:
            raise ValueError("context size must be positive")
        self.gguf = model if isinstance(model, GGUFFile) else GGUFFile(model)
        self.path = Path(self.gguf.path)
        self.tokenizer = Tokenizer(self.path, self.gguf)
        self.n_threads = n_threads or default_threads()
        self.backend = make_backend(backend, self.n_threads)
        cls = model_class(self.gguf.architecture)
        self.model: Transformer = cls(self.gguf, self.backend, self.tokenizer.vocab_size)
        self.args = self.model.args
        # the huge-page copy runs in the background and is swapped in between steps (_swap_pinned)
        self.pinned_bytes = 0
        # batch_tiles: the serving engine's batches read a second, tiled copy of the matrices
        # (runtime/weights.py build_tiles), made by the same background job
        tiles = batch_tiles and implements(self.backend, BatchTiles)
        pin = self.pin_weights_at_init
        self._pin_job = (PinJob(self.model.tensors(), background=True, tiles=tiles, pin=pin)
                         if pin or tiles else None)
        self.tile_bytes = 0
        self.n_ctx = min(n_ctx, self.args.context_length)
        self.block_size = block_size
        self.num_blocks = num_blocks or 2 * (-(-self.n_ctx // block_size))
        self.kv = KVCache(self.args.n_layers, self.num_blocks, block_size, self.args.n_kv_heads,
                          self.args.head_dim, kv_type)
        self.model_name = self.path.stem

    def _swap_pinned(self) -> None:
        job = self._pin_job
        if job is not None and job.ready():
            self.pinned_bytes = job.apply()
            self.tile_bytes = job.tile_bytes
            self._pin_job = None

    def wait_pinned(self, timeout: float | None = None) -> int:
        """Wait for the background huge-page copy of the weights and swap it in (benchmarks call
        this before timing); returns the bytes moved."""
        if self._pin_job is not None:
            self._pin_job.wait(timeout)
            self._swap_pinned()
        return self.pinned_bytes

    def forward(self, seqs: list[SeqInput]) -> list[np.ndarray]:
        """Per sequence: logits (vocab,) of its last new token, or (T, vocab) if asked."""
        self._swap_pinned()
        if not seqs:
            return []
        toks, pos, starts, lens, ctxs, slots, want = [], [], [], [], [], [], []
        off = 0
        for s in seqs:
            t = np.asarray(s.tokens, dtype=np.int32).reshape(-1)
            n = len(t)
            if n == 0:
                raise ValueError("a sequence needs at least one new token")
            ctx = s.start_pos + n
            if ctx > self.n_ctx:
                raise ValueError(f"sequence of {ctx} tokens exceeds the context of {self.n_ctx}")
            if np.any((t < 0) | (t >= self.args.vocab_size)):
                raise ValueError("token id out of range")
            toks.append(t)
            pos.append(np.arange(s.start_pos, ctx, dtype=np.int64))
            starts.append(off)
            lens.append(n)
            ctxs.append(ctx)
            slots.append(self.kv.slots(s.block_table, 0, ctx))
            want.append(s.want_all_logits)
            off += n
        batch = SeqBatch(np.concatenate(toks), np.concatenate(pos), starts, lens, ctxs, slots, want)
        return self.model.forward(batch, self.kv)

    def contiguous_table(self, n_tokens: int, first_block: int = 0) -> np.ndarray:
        """Block table of consecutive blocks, for callers that run one sequence alone."""
        n = -(-n_tokens // self.block_size)
        if first_block + n > self.num_blocks:
            raise ValueError(f"{n_tokens} tokens need more than the {self.num_blocks} KV blocks")
        return np.arange(first_block, first_block + n, dtype=np.int32)
