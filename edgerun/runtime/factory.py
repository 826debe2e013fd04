"""The runner factory every face calls (CLI, server, chat app, benchmarks).

Loading, followed as data: the GGUF file is opened and validated once (:class:`GGUFFile`, an
mmap); the planner reads that object's tensor table and metadata, and the same object is handed to
the :class:`Runner` (or :class:`HybridRunner`), whose model and tokenizer read it from memory. The
options are a plain dataclass: faces convert their own flags (argparse, settings) into it, so the
core never sees an argparse namespace.

Policy: ``placement="cpu"`` without overrides skips the planner; otherwise the plan decides, and a
plan that uses no GPU (no GPU found, or a budget too small for one layer) gives the plain CPU
runner. A plan that wants a GPU when CuPy/CUDA cannot be used says so on stderr and runs on the CPU.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from edgerun.quant.gguf_file import GGUFFile
from edgerun.runtime.planner import CPU_KV_BYTES, Plan, plan_placement
from edgerun.runtime.runner import Runner


@dataclass(frozen=True)
class RunnerOptions:
    """How to load a model: the :class:`Runner` arguments plus the placement ones."""

    n_ctx: int = 4096  # tokens per sequence (clamped to the model's context length)
    n_threads: int | None = None  # CPU threads (None: every core this process may use)
    num_blocks: int | None = None  # KV blocks (None: two full contexts)
    block_size: int = 16  # tokens per KV block
    backend: str = "auto"  # CPU kernels: auto | native | numba | reference
    kv_type: str = "f16"  # CPU KV cache element: f16 | f32
    batch_tiles: bool = False  # a second, batch-friendly copy of the matrices (the server's choice)
    placement: str = "auto"  # auto | cpu | gpu | hybrid (runtime/planner.py)
    vram_budget: int | None = None  # bytes of VRAM to use at most
    vram_bytes: int | None = None  # pretend this much free VRAM (None: probe the GPU)
    overrides: tuple[str, ...] = field(default=())  # REGEX=cpu|gpu, last match wins
    overlap: bool = True  # hybrid: overlap one half-batch's GPU attention with the other's CPU FFN
    graphs: bool = True  # hybrid: CUDA graphs for decode steps

    def __post_init__(self) -> None:
        # callers pass lists; a tuple keeps the options hashable and immutable
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if self.n_ctx <= 0:
            raise ValueError("context size must be positive")

    def runner_kwargs(self) -> dict[str, Any]:
        """The :class:`Runner` constructor's keyword arguments."""
        return {"n_ctx": self.n_ctx, "n_threads": self.n_threads, "num_blocks": self.num_blocks,
                "block_size": self.block_size, "backend": self.backend, "kv_type": self.kv_type,
                "batch_tiles": self.batch_tiles}


def plan_for(gf: GGUFFile, opts: RunnerOptions) -> Plan:
    """The placement plan of an opened file, with the KV cache at the size the runner will allocate."""
    from edgerun.models.registry import model_class

    emb = gf.tensors.get("token_embd.weight")
    vocab = int(emb.shape[1]) if emb is not None and len(emb.shape) > 1 else 1
    args = model_class(gf.architecture).build_args(gf.metadata, vocab)
    ctx = min(opts.n_ctx, args.context_length)
    slots = (opts.num_blocks or 2 * math.ceil(ctx / opts.block_size)) * opts.block_size
    return plan_placement(gf, args.n_layers, args.n_kv_heads, args.head_dim, ctx=slots, batch=1,
                          mode=opts.placement, vram_bytes=opts.vram_bytes, vram_budget=opts.vram_budget,
                          overrides=opts.overrides, kv_bytes_per_elem=CPU_KV_BYTES[opts.kv_type])


def make_runner(model: str | os.PathLike | GGUFFile, options: RunnerOptions | None = None,
                **changes: Any) -> Runner:
    """The runner for ``model`` (a path or an opened file): plain :class:`Runner` when nothing goes
    on a GPU, else a :class:`~edgerun.runtime.hybrid.HybridRunner` over the plan.

    ``changes`` replace fields of ``options`` (``make_runner(path, n_ctx=512, placement="cpu")``);
    an unknown name is a TypeError, not ignored.
    """
    opts = replace(options or RunnerOptions(), **changes)
    gf = model if isinstance(model, GGUFFile) else GGUFFile(model)
    try:
        return _build(gf, opts)
    except BaseException:
        if gf is not model:  # ours: nothing else will close the mapping
            gf.close()
        raise


def gpu_unsupported(gf: GGUFFile) -> str | None:
    """Why the GPU path cannot run this file, or None: its kernels know dense FFNs and plain or
    linear RoPE; mixture-of-experts layers and RoPE frequency factors run on the CPU only so far."""
    arch = gf.architecture
    if f"{arch}.expert_count" in gf.metadata:
        return f"{arch}: mixture-of-experts layers are not supported on the GPU yet"
    if "rope_freqs.weight" in gf.tensors:
        return f"{arch}: RoPE frequency factors (rope_freqs.weight) are not supported on the GPU yet"
    return None


def _build(gf: GGUFFile, opts: RunnerOptions) -> Runner:
    kw = opts.runner_kwargs()
    if opts.placement == "cpu" and not opts.overrides:
        return Runner(gf, **kw)
    plan = plan_for(gf, opts)
    if not plan.uses_gpu:
        return Runner(gf, **kw)
    from edgerun.backends import cuda

    if not cuda.available():
        print("edgerun: the plan uses a GPU but CuPy/CUDA is unavailable; running on the CPU",
              file=sys.stderr)
        return Runner(gf, **kw)
    reason = gpu_unsupported(gf)
    if reason is not None:
        if opts.placement == "auto" and not opts.overrides:
            print(f"edgerun: {reason}; running on the CPU", file=sys.stderr)
            return Runner(gf, **kw)
        raise ValueError(f"--placement {opts.placement}: {reason} (use --placement cpu)")
    from edgerun.runtime.hybrid import HybridRunner

    return HybridRunner(gf, plan=plan, overlap=opts.overlap, graphs=opts.graphs, **kw)


__all__ = ["RunnerOptions", "make_runner", "plan_for"]
