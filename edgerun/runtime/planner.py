"""Placement planner: which tensors and which part of the KV cache go on the GPU.

The plan is computed from the GGUF tensor table (names and byte sizes), the model's KV geometry,
the context and batch the runner will serve, and the free VRAM (probed, or pretended with
``vram_bytes``). Greedy, in the order that pays most for a hybrid step:

1. per layer, in layer order: the attention tensors (Q/K/V/O weights, their biases and norms) and
   that layer's slice of the KV cache, until the usable VRAM (free VRAM minus a reserve for the
   CUDA context, the dequantize scratch, the cuBLAS workspace and activations) runs out;
2. with every layer's attention on the GPU: the output head (``auto`` and ``hybrid``: on the CPU it
   reads the whole vocabulary matrix every token, the largest single read of a small model), then
   (``auto``) whole FFN blocks (all of a layer's ``ffn_*`` tensors) layer by layer while they fit;
   (``gpu``) whole layers, attention + KV + FFN together, like llama.cpp's ``-ngl``, then the head;
   (``cpu``) nothing on the GPU at all.

KV bytes are counted with the element size each device stores: f16 on the GPU (the CUDA backend's
cache), the runner's ``kv_type`` on the CPU (f16 by default).

Token embeddings always stay on the CPU (a row lookup). Regex overrides ``REGEX=cpu|gpu``
(repeatable, last match wins, like llama.cpp's ``-ot``) are applied after the planner and beat it.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

CPU, GPU = "cpu", "gpu"
MODES = ("auto", "cpu", "gpu", "hybrid")
KV_BYTES_PER_ELEM = 2  # f16: the GPU cache always, the CPU cache by default
GPU_KV_BYTES = 2
CPU_KV_BYTES = {"f16": 2, "f32": 4}
MIB = 1 << 20
RESERVE_FRACTION = 0.05  # activations and allocator slack
RESERVE_FIXED = 256 * MIB  # the CUDA context and module images
DEQUANT_SCRATCH = 256 * MIB  # CudaBackend.chunk_bytes: one weight chunk dequantized to f32 (large batches)
CUBLAS_WORKSPACE = 32 * MIB  # cuBLAS's default workspace on Hopper (4 MiB before): take the larger

_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


class PlanError(ValueError):
    """Bad planner input (mode, override, sizes): a one-line message."""


class _TensorLike(Protocol):
    nbytes: int


@dataclass(frozen=True)
class Placement:
    """Where one tensor of the file lives."""

    name: str
    device: str  # "cpu" | "gpu"
    bytes: int
    group: str  # "attn" | "ffn" | "embd" | "head" | "other"
    layer: int | None = None


@dataclass
class Plan:
    """A placement plan: per tensor name its device, the KV cache, totals and a per-layer summary."""

    mode: str
    n_layers: int
    ctx: int
    batch: int
    vram_free: int  # bytes of free VRAM the plan started from (probed or pretended)
    vram_usable: int  # after the budget cap and the reserve
    reserve: int
    tensors: dict[str, Placement]
    kv_layer_bytes: int  # KV bytes of one layer (K and V) on the GPU (f16)
    kv_devices: list[str]  # per layer
    head_tensor: str  # the tensor the output projection reads ("output.weight" or tied "token_embd.weight")
    head_device: str
    overrides: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kv_cpu_layer_bytes: int = 0  # KV bytes of one layer kept on the CPU (the runner's kv_type)
    predicted: dict[str, float] = field(default_factory=dict)  # predict(): decode/prefill tok/s, bytes
    gpu_spec: str = ""  # the GPU table entry the prediction used
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)  # auto: each layout's prediction

    # --- derived views
    def device_of(self, name: str) -> str:
        """Device of tensor ``name`` (KeyError if the file has no such tensor)."""
        return self.tensors[name].device

    @property
    def kv_cache(self) -> dict[str, Any]:
        """``{"device", "bytes", "gpu_bytes", "cpu_bytes"}``; device is "split" when layers differ."""
        n_gpu = sum(1 for d in self.kv_devices if d == GPU)
        gpu = self.kv_layer_bytes * n_gpu
        cpu = (self.kv_cpu_layer_bytes or self.kv_layer_bytes) * (len(self.kv_devices) - n_gpu)
        dev = GPU if cpu == 0 and gpu > 0 else CPU if gpu == 0 else "split"
        return {"device": dev, "bytes": gpu + cpu, "gpu_bytes": gpu, "cpu_bytes": cpu}

    @property
    def head_copy_bytes(self) -> int:
        """VRAM of a GPU copy of a tied output head (the embedding table itself stays on the CPU)."""
        t = self.tensors.get(self.head_tensor)
        if t is None or self.head_device != GPU or t.device == GPU:
            return 0
        return t.bytes

    @property
    def totals(self) -> dict[str, int]:
        """Bytes per device: weights plus KV cache (plus a tied head's GPU copy)."""
        out = {CPU: 0, GPU: 0}
        for t in self.tensors.values():
            out[t.device] += t.bytes
        kv = self.kv_cache
        out[CPU] += kv["cpu_bytes"]
        out[GPU] += kv["gpu_bytes"] + self.head_copy_bytes
        return out

    def layer_devices(self, i: int) -> dict[str, str]:
        """``{"attn": dev, "ffn": dev}`` of layer ``i``; "mixed" when its tensors are split."""
        out = {}
        for group in ("attn", "ffn"):
            devs = {t.device for t in self.tensors.values() if t.layer == i and t.group == group}
            out[group] = devs.pop() if len(devs) == 1 else ("mixed" if devs else CPU)
        return out

    @property
    def layers(self) -> dict[int, dict[str, str]]:
        """Per-layer summary ``{layer: {"attn": dev, "ffn": dev}}``."""
        return {i: self.layer_devices(i) for i in range(self.n_layers)}

    @property
    def uses_gpu(self) -> bool:
        """Whether anything at all is placed on the GPU."""
        return self.totals[GPU] > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every tensor of the file, the KV cache, totals, layers and budget."""
        return {
            "mode": self.mode,
            "ctx": self.ctx,
            "batch": self.batch,
            "tensors": [{"name": t.name, "device": t.device, "bytes": t.bytes}
                        for t in self.tensors.values()],
            "kv_cache": self.kv_cache,
            "head": {"tensor": self.head_tensor, "device": self.head_device},
            "totals": self.totals,
            "layers": {str(i): d for i, d in self.layers.items()},
            "vram": {"free": self.vram_free, "usable": self.vram_usable, "reserve": self.reserve},
            "overrides": [f"{p}={d}" for p, d in self.overrides],
            "notes": list(self.notes),
            "predicted": dict(self.predicted, gpu=self.gpu_spec) if self.predicted else {},
            "candidates": {k: dict(v) for k, v in self.candidates.items()},
        }

    def speed_lines(self) -> list[str]:
        """Human-readable predicted speeds (empty without a prediction)."""
        if not self.predicted:
            return []
        p = self.predicted
        where = self.gpu_spec if self.uses_gpu else "CPU only"
        out = [f"predicted ({where}): decode {p['decode_tok_s']:.1f} tok/s, prefill "
               f"{p['prefill_tok_s']:.0f} tok/s; per token CPU reads {p['cpu_bytes_per_token'] / MIB:.0f} "
               f"MiB, GPU {p['gpu_bytes_per_token'] / MIB:.0f} MiB"]
        for k, v in self.candidates.items():
            out.append(f"  {k:<24} decode {v['decode_tok_s']:8.1f} tok/s   "
                       f"prefill {v['prefill_tok_s']:8.0f} tok/s")
        return out

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)


# ----------------------------------------------------------------------------- helpers


def kv_bytes(ctx: int, batch: int, n_layers: int, n_kv_heads: int, head_dim: int,
             bytes_per_elem: int = KV_BYTES_PER_ELEM) -> int:
    """KV cache bytes: ctx × batch × layers × 2 (K and V) × kv_heads × head_dim × element size."""
    return ctx * batch * n_layers * 2 * n_kv_heads * head_dim * bytes_per_elem


def reserve_bytes(vram: int, scratch: int = DEQUANT_SCRATCH) -> int:
    """VRAM kept back (capped at all of it): 5% for activations, 256 MiB for the CUDA context, the
    dequantize ``scratch`` of large-batch matmuls and the cuBLAS workspace."""
    return min(vram, int(vram * RESERVE_FRACTION) + RESERVE_FIXED + scratch + CUBLAS_WORKSPACE)


def dequant_scratch(tensors: Mapping[str, Any]) -> int:
    """f32 bytes of the largest matrix dequantized at once (capped at :data:`DEQUANT_SCRATCH`)."""
    most = 0
    for info in tensors.values():
        shape = getattr(info, "shape", None)
        if shape is None:
            return DEQUANT_SCRATCH  # sizes only (tests, synthetic tables): assume the cap
        if len(shape) >= 2:
            n = 1
            for d in shape:
                n *= int(d)
            most = max(most, 4 * n)
    return min(DEQUANT_SCRATCH, most)


def classify(name: str) -> tuple[str, int | None]:
    """(group, layer) of a GGUF tensor name; group is attn, ffn, embd, head or other."""
    m = _LAYER_RE.match(name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        if rest.startswith(("ffn_", "post_ffw_norm")):
            return "ffn", layer
        # attn_q/k/v/output (+ biases), attn_norm, attn_q_norm/attn_k_norm, post_attention_norm and
        # any other small per-layer tensor travel with the attention
        return "attn", layer
    if name.startswith("token_embd"):
        return "embd", None
    if name.startswith(("output.", "output_norm")):
        return "head", None
    return "other", None


def parse_override(spec: str) -> tuple[str, str]:
    """``"REGEX=cpu|gpu"`` -> (pattern, device); raises PlanError on a bad spec."""
    if "=" not in spec:
        raise PlanError(f"override '{spec}' is not REGEX=cpu|gpu")
    pat, dev = spec.rsplit("=", 1)
    dev = dev.strip().lower()
    if dev.startswith("cuda"):
        dev = GPU
    if dev not in (CPU, GPU) or not pat:
        raise PlanError(f"override '{spec}' is not REGEX=cpu|gpu")
    try:
        re.compile(pat)
    except re.error as e:
        raise PlanError(f"override '{spec}': bad regex: {e}") from None
    return pat, dev


def _norm_overrides(overrides: Iterable[str | tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for o in overrides:
        if isinstance(o, str):
            out.append(parse_override(o))
        else:
            pat, dev = o
            out.append(parse_override(f"{pat}={dev}"))
    return out


def model_dims(gf: Any) -> tuple[int, int, int]:
    """(n_layers, n_kv_heads, head_dim) of a GGUF file, read as the model classes read them."""
    from edgerun.models.registry import model_class

    emb = gf.tensors.get("token_embd.weight")
    vocab = int(emb.shape[1]) if emb is not None and len(emb.shape) > 1 else 1
    args = model_class(gf.architecture).build_args(gf.metadata, vocab)
    return args.n_layers, args.n_kv_heads, args.head_dim


# ----------------------------------------------------------------------------- the planner


def plan_placement(
    tensors: Mapping[str, _TensorLike] | Any,
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    ctx: int = 4096,
    batch: int = 1,
    mode: str = "auto",
    vram_bytes: int | None = None,
    vram_budget: int | None = None,
    overrides: Sequence[str | tuple[str, str]] = (),
    kv_bytes_per_elem: int = KV_BYTES_PER_ELEM,
    by_speed: bool = True,
    gpu_name: str | None = None,
    cpu: dict[str, float] | None = None,
    cpu_only_prediction: bool = False,
) -> Plan:
    """Plan where each tensor and each layer's KV cache goes.

    ``tensors`` is a GGUFFile (its ``.tensors`` is used) or a mapping name -> object with ``nbytes``.
    ``vram_bytes`` pretends that much free VRAM (None: probe the first GPU); ``vram_budget`` caps it.
    ``kv_bytes_per_elem`` is the CPU cache's element size (the runner's kv_type); the GPU's is f16.

    With a GPU, every plan carries the predicted decode and prefill speed (:func:`predict`; ``gpu_name``
    picks the GPU table entry, default the probed GPU's name or an RTX 4090; ``cpu`` the CPU's
    measured speeds, default :func:`cpu_speed`). ``auto`` with ``by_speed`` plans the greedy
    attention-first layout, the ``gpu`` (whole layers) and ``hybrid`` layouts and ``cpu``, and keeps
    the fastest predicted decode (the greedy one on a tie). Without a GPU the CPU-only prediction is
    made only when asked (``cpu_only_prediction``, ``edgerun plan``) or given ``cpu``: a runner on a
    machine without a GPU should not measure the CPU at start-up.
    """
    common = dict(ctx=ctx, batch=batch, vram_bytes=vram_bytes, vram_budget=vram_budget, overrides=overrides,
                  kv_bytes_per_elem=kv_bytes_per_elem)
    plan = _plan_placement(tensors, n_layers, n_kv_heads, head_dim, mode=mode, **common)  # type: ignore[arg-type]
    if plan.vram_free == 0 and not plan.uses_gpu and cpu is None and not cpu_only_prediction:
        return plan
    table = tensors.tensors if hasattr(tensors, "tensors") else tensors
    if gpu_name is None and vram_bytes is None:
        from edgerun.runtime.devices import probe_gpus

        gpus = probe_gpus()
        gpu_name = gpus[0].name if gpus else None
    spec = gpu_spec_for(gpu_name)
    speeds = cpu if cpu is not None else cpu_speed()
    plan.predicted = predict(plan, speeds, spec, table)
    plan.gpu_spec = spec.name
    if mode != "auto" or not by_speed or (plan.vram_free == 0 and not plan.uses_gpu):
        plan.notes.append(plan.speed_lines()[0])
        return plan
    best, best_name = plan, "auto (attention first)"
    cands = {best_name: plan}
    for m in ("gpu", "hybrid", "cpu"):
        c = _plan_placement(tensors, n_layers, n_kv_heads, head_dim, mode=m, **common)  # type: ignore[arg-type]
        c.predicted = predict(c, speeds, spec, table)
        c.gpu_spec = spec.name
        cands[m] = c
        if c.predicted["decode_tok_s"] > best.predicted["decode_tok_s"]:
            best, best_name = c, m
    best.mode = "auto"
    best.candidates = {k: dict(v.predicted) for k, v in cands.items()}
    best.notes.append(best.speed_lines()[0])
    best.notes.append(f"auto: the {best_name} layout is predicted fastest ("
                      + ", ".join(f"{k} {v.predicted['decode_tok_s']:.1f}" for k, v in cands.items())
                      + " decode tok/s)")
    return best


def _plan_placement(
    tensors: Mapping[str, _TensorLike] | Any,
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    ctx: int = 4096,
    batch: int = 1,
    mode: str = "auto",
    vram_bytes: int | None = None,
    vram_budget: int | None = None,
    overrides: Sequence[str | tuple[str, str]] = (),
    kv_bytes_per_elem: int = KV_BYTES_PER_ELEM,
) -> Plan:
    if mode not in MODES:
        raise PlanError(f"unknown placement '{mode}' (choose from {', '.join(MODES)})")
    if ctx <= 0 or batch <= 0:
        raise PlanError("context and batch must be positive")
    if n_layers <= 0 or n_kv_heads <= 0 or head_dim <= 0:
        raise PlanError("model sizes must be positive")
    if vram_bytes is not None and vram_bytes < 0 or vram_budget is not None and vram_budget < 0:
        raise PlanError("VRAM sizes must be >= 0")
    ovr = _norm_overrides(overrides)
    table = tensors.tensors if hasattr(tensors, "tensors") else tensors
    notes: list[str] = []

    if vram_bytes is None:
        from edgerun.runtime.devices import probe_gpus

        gpus = probe_gpus()
        free = gpus[0].vram_free if gpus else 0
    else:
        free = int(vram_bytes)
    cap = free if vram_budget is None else min(free, int(vram_budget))
    reserve = reserve_bytes(cap, dequant_scratch(table))
    usable = cap - reserve if mode != CPU else 0
    if mode == GPU and free == 0:
        notes.append("placement gpu: no GPU memory, everything stays on the CPU")

    place: dict[str, Placement] = {}
    attn_of: dict[int, list[str]] = {i: [] for i in range(n_layers)}
    ffn_of: dict[int, list[str]] = {i: [] for i in range(n_layers)}
    for name, info in table.items():
        group, layer = classify(name)
        if layer is not None and not 0 <= layer < n_layers:
            group, layer = "other", None
        place[name] = Placement(name, CPU, int(info.nbytes), group, layer)
        if group == "attn":
            attn_of[layer].append(name)  # type: ignore[index]
        elif group == "ffn":
            ffn_of[layer].append(name)  # type: ignore[index]
    head = "output.weight" if "output.weight" in place else "token_embd.weight"
    head_names = [n for n in ("output.weight", "output_norm.weight") if n in place]
    head_bytes = sum(place[n].bytes for n in head_names)
    if head == "token_embd.weight" and head in place:
        head_bytes += place[head].bytes  # a GPU copy of the tied embedding table
    kv_layer = kv_bytes(ctx, batch, 1, n_kv_heads, head_dim, GPU_KV_BYTES)
    kv_cpu_layer = kv_bytes(ctx, batch, 1, n_kv_heads, head_dim, kv_bytes_per_elem)
    kv_dev = [CPU] * n_layers
    head_dev = CPU
    left = usable

    def to_gpu(names: list[str]) -> None:
        for n in names:
            p = place[n]
            place[n] = Placement(p.name, GPU, p.bytes, p.group, p.layer)

    def size(names: list[str]) -> int:
        return sum(place[n].bytes for n in names)

    def try_head() -> None:
        nonlocal left, head_dev
        if head in place and head_bytes <= left:
            to_gpu(head_names)
            head_dev = GPU
            left -= head_bytes

    if mode in ("auto", "hybrid"):
        n_attn = 0
        for i in range(n_layers):
            need = size(attn_of[i]) + kv_layer
            if need > left:
                break
            to_gpu(attn_of[i])
            kv_dev[i] = GPU
            left -= need
            n_attn += 1
        if n_attn == n_layers:
            try_head()
        if mode == "auto" and n_attn == n_layers:
            for i in range(n_layers):
                need = size(ffn_of[i])
                if need > left:
                    break
                to_gpu(ffn_of[i])
                left -= need
        if 0 < n_attn < n_layers:
            notes.append(f"attention of {n_attn} of {n_layers} layers fits in VRAM")
    elif mode == GPU:
        for i in range(n_layers):
            need = size(attn_of[i]) + size(ffn_of[i]) + kv_layer
            if need > left:
                break
            to_gpu(attn_of[i] + ffn_of[i])
            kv_dev[i] = GPU
            left -= need
        else:
            try_head()

    # overrides beat the planner: last match wins
    if ovr:
        for name, p in list(place.items()):
            dev = None
            for pat, d in ovr:
                if re.search(pat, name):
                    dev = d
            if dev is not None and dev != p.device:
                place[name] = Placement(p.name, dev, p.bytes, p.group, p.layer)
        # the KV cache sits with the attention that reads it; the head follows its weight
        for i in range(n_layers):
            names = attn_of[i]
            kv_dev[i] = GPU if names and all(place[n].device == GPU for n in names) else CPU
        if head in place:
            if head == "output.weight":
                head_dev = place[head].device
            elif any(re.search(p, head) for p, _ in ovr):
                head_dev = place[head].device
    lone = [i for i in range(n_layers) if kv_dev[i] != GPU and any(place[n].device == GPU for n in ffn_of[i])]
    if lone:
        notes.append(f"{len(lone)} layer(s) (first {lone[0]}) have FFN tensors on the GPU but not their "
                     "attention: the runtime runs those FFNs on the CPU")
    plan = Plan(mode=mode, n_layers=n_layers, ctx=ctx, batch=batch, vram_free=free,
                vram_usable=max(usable, 0), reserve=reserve, tensors=place, kv_layer_bytes=kv_layer,
                kv_devices=kv_dev, head_tensor=head, head_device=head_dev, overrides=ovr, notes=notes,
                kv_cpu_layer_bytes=kv_cpu_layer)
    if ovr and plan.totals[GPU] > cap:
        notes.append(f"overrides put {plan.totals[GPU] / MIB:.0f} MiB on the GPU, over the "
                     f"{cap / MIB:.0f} MiB available")
    return plan


def plan_for_file(gf: Any, ctx: int = 4096, batch: int = 1, **kw: Any) -> Plan:
    """:func:`plan_placement` for a GGUFFile, reading the KV geometry from its metadata."""
    n_layers, n_kv_heads, head_dim = model_dims(gf)
    kw.setdefault("cpu_only_prediction", True)
    return plan_placement(gf, n_layers, n_kv_heads, head_dim, ctx=ctx, batch=batch, **kw)


# ----------------------------------------------------------------------------- predicted speed (§3)
# Batch-1 decode is memory-bound: a token reads every weight once, on the device that holds it, plus
# that device's KV cache. Predicted time per token = CPU bytes / CPU read bandwidth + GPU bytes / GPU
# bandwidth + a fixed cost per layer that crosses PCIe (two copies and a synchronize). Prefill is
# compute-bound: 2 flops per weight per token on the device that holds the weight.


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures of a GPU (or measured ones)."""

    name: str
    mem_gbs: float  # device memory bandwidth, GB/s
    pcie_gbs: float  # pinned host <-> device, GB/s, one direction
    fp16_tflops: float  # dense tensor-core FP16 with FP32 accumulation


GPU_SPECS: dict[str, GPUSpec] = {
    "4090": GPUSpec("RTX 4090", 1008, 25, 165),
    "3090": GPUSpec("RTX 3090", 936, 25, 71),
    "4060 laptop": GPUSpec("RTX 4060 Laptop", 256, 12, 45),
    "a100": GPUSpec("A100", 1935, 25, 312),
    "h100": GPUSpec("H100", 3350, 53, 990),  # 53 GB/s: measured pinned H2D on a PCIe gen5 H100
    "h200": GPUSpec("H200", 4800, 53, 990),
}
DEFAULT_GPU = "4090"  # the card edgerun's hybrid mode is designed for; used for pretended VRAM
GPU_EFFICIENCY = 0.8  # fraction of the datasheet bandwidth a matvec reaches
# Our CPU matvec reads 26.0-28.8 GB/s where numpy's parallel sum (measure_cpu) gives 29.5-33.9 GB/s
# on the development machine (docs/PERFORMANCE.md): predictions use 85% of the measured figure.
CPU_EFFICIENCY = 0.85
TENSOR_EFFICIENCY = 0.5
LAYER_SYNC_S = 20e-6  # a GPU attention segment inside a CPU layer: copy in, copy out, synchronize
GPU_LAYER_S = 10e-6  # graph replay of one layer's kernels
PREFILL_TOKENS = 512


def gpu_spec_for(name: str | None) -> GPUSpec:
    """The table entry whose key names ``name`` (an NVML name or a key), else the default (4090)."""
    low = (name or os.environ.get("EDGERUN_GPU") or DEFAULT_GPU).lower()
    for key in sorted(GPU_SPECS, key=len, reverse=True):
        if all(part in low for part in key.split()):
            return GPU_SPECS[key]
    return GPU_SPECS[DEFAULT_GPU]


def _cache_file() -> str:
    root = os.environ.get("EDGERUN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "edgerun")
    return os.path.join(root, "cpu_speed.json")


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu(threads: int, mb: int = 256) -> dict[str, float]:
    """CPU read bandwidth (GB/s; numpy sums on ``threads`` threads, median of 5) and f32 GEMM GFLOP/s."""
    import statistics
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.ones(mb * MIB // 4, np.float32)
    parts = np.array_split(a, threads)
    times = []
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(np.sum, parts))
        for _ in range(5):
            t = time.perf_counter()
            list(ex.map(np.sum, parts))
            times.append(time.perf_counter() - t)
    bw = a.nbytes / statistics.median(times) / 1e9
    m = np.ones((512, 512), np.float32)
    m @ m
    t = time.perf_counter()
    for _ in range(4):
        m @ m
    gflops = 4 * 2 * 512**3 / (time.perf_counter() - t) / 1e9
    return {"read_gbs": bw, "gemm_gflops": gflops}


def cpu_speed(threads: int | None = None) -> dict[str, float]:
    """:func:`measure_cpu` measured once per CPU model and thread count, then read from a cache file
    (``$EDGERUN_CACHE_DIR/cpu_speed.json``)."""
    from edgerun.runtime.devices import probe_cpu

    threads = threads or max(1, probe_cpu().physical_cores)
    key = f"{_cpu_id()}|{threads}"
    path = _cache_file()
    cache: dict[str, Any] = {}
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        pass
    if key not in cache:
        cache[key] = measure_cpu(threads)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, path)
        except OSError:
            pass  # unwritable cache: measure again next time
    return cache[key]


def _elements(info: Any, nbytes: int) -> int:
    shape = getattr(info, "shape", None)
    if shape is None:
        return 2 * nbytes  # about 4.5 bits a weight
    n = 1
    for d in shape:
        n *= int(d)
    return n


def predict(plan: Plan, cpu: dict[str, float], gpu: GPUSpec, table: Mapping[str, Any] | None = None,
            at_ctx: int = 256) -> dict[str, float]:
    """Predicted batch-1 decode and prefill tok/s of ``plan`` (see the section comment).

    ``cpu`` as from :func:`cpu_speed`; ``at_ctx`` tokens of context are read from each layer's cache.
    """
    kv_tok_gpu = plan.kv_layer_bytes / max(plan.ctx * plan.batch, 1)
    kv_tok_cpu = (plan.kv_cpu_layer_bytes or plan.kv_layer_bytes) / max(plan.ctx * plan.batch, 1)
    read = {CPU: 0.0, GPU: 0.0}
    flops = {CPU: 0.0, GPU: 0.0}
    streamed = {i for i in range(plan.n_layers) if plan.kv_devices[i] == GPU}  # prefill: FFN streamed in
    stream_bytes = 0.0
    stream_flops = 0.0
    for t in plan.tensors.values():
        info = table.get(t.name) if table is not None else None
        if t.group == "embd":
            if t.name == plan.head_tensor:  # tied head: the whole table is read, where the head runs
                read[plan.head_device] += t.bytes
                flops[plan.head_device] += 2 * _elements(info, t.bytes)
            continue
        read[t.device] += t.bytes
        flops[t.device] += 2 * _elements(info, t.bytes)
        if t.group == "ffn" and t.device == CPU and t.layer in streamed:
            stream_bytes += t.bytes
            stream_flops += 2 * _elements(info, t.bytes)
    for d in plan.kv_devices:
        read[d] += at_ctx * (kv_tok_gpu if d == GPU else kv_tok_cpu)
    crossings = 0
    for i in range(plan.n_layers):
        lay = plan.layer_devices(i)
        if lay["attn"] == GPU and lay["ffn"] != GPU:
            crossings += 1
    gpu_layers = sum(1 for d in plan.kv_devices if d == GPU)
    t_cpu = read[CPU] / (cpu["read_gbs"] * 1e9 * CPU_EFFICIENCY)
    t_gpu = read[GPU] / (gpu.mem_gbs * 1e9 * GPU_EFFICIENCY) + gpu_layers * GPU_LAYER_S if read[GPU] else 0.0
    t_dec = t_cpu + t_gpu + crossings * LAYER_SYNC_S
    # prefill of PREFILL_TOKENS: the CPU-placed FFNs of GPU-attention layers run on the GPU with their
    # weights streamed over PCIe (overlapped with the GPU's compute: the slower of the two counts)
    p = PREFILL_TOKENS
    gpu_rate = gpu.fp16_tflops * 1e12 * TENSOR_EFFICIENCY
    t_gpu_pre = (flops[GPU] + stream_flops) * p / gpu_rate
    t_gpu_pre += read[GPU] / (gpu.mem_gbs * 1e9) if read[GPU] else 0.0
    t_pre = ((flops[CPU] - stream_flops) * p / (cpu["gemm_gflops"] * 1e9)
             + max(t_gpu_pre, stream_bytes / (gpu.pcie_gbs * 1e9)) + crossings * LAYER_SYNC_S)
    return {"decode_tok_s": 1.0 / max(t_dec, 1e-12), "prefill_tok_s": p / max(t_pre, 1e-12),
            "cpu_bytes_per_token": read[CPU], "gpu_bytes_per_token": read[GPU], "pcie_crossings": crossings}
