"""CUDA backend: the CUDA C kernels of ``native/cuda`` compiled at run time with NVRTC through CuPy.

Import-safe without CuPy or a GPU (:func:`available` is then False). Weights are uploaded once (a
cache keyed by the :class:`QTensor`), scratch buffers are preallocated and reused, host transfers
go through pinned buffers, and everything runs on one stream.

Two levels of API:

* the :class:`~edgerun.backends.base.Backend` protocol (numpy in, numpy out): ``matmul``,
  ``get_rows`` and the light ops ``rms_norm``, ``rope``, ``paged_attention`` (used by the tests to
  compare op by op with the CPU backend);
* device-level ops over CuPy arrays (``mm``, ``rms_norm_dev``, ``qk_norm_dev``, ``rope_dev``,
  ``kv_write_dev``, ``attention_dev``, ...) that the hybrid runner chains without host round trips,
  all writing into caller-provided or pooled buffers so that a decode step can be captured into a
  CUDA graph.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.backends.base import QTensor
from edgerun.quant.traits import TRAITS, row_bytes

# GGML type id -> kernel suffix (mul_mat_<s>, dequant_<s>, get_rows_<s> in matmul.cu)
TYPE_SUFFIX: dict[int, str] = {0: "f32", 1: "f16", 30: "bf16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1",
                               8: "q8_0", 12: "q4_k", 13: "q5_k", 14: "q6_k"}
SOURCES = ("matmul", "norm", "rope", "kv", "attention")
KERNEL_NAMES = ("rms_norm_f32", "qk_norm_f32", "add_bias_f32", "add_f32", "act_mul_f32", "scale_f32",
                "rope_f32", "kv_write_f16", "attn_paged_partial", "attn_reduce", "attn_prefill")
MM_BT = 8  # batch rows per mul_mat block (matmul.cu)
ATT_WARPS = 4  # attention.cu
ATT_PF_ROWS = 8
MAX_HEAD_DIM = 256
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$')


def cuda_dir() -> Path:
    """Folder of the .cu sources (``EDGERUN_CUDA_DIR`` or ``native/cuda`` of the source tree)."""
    env = os.environ.get("EDGERUN_CUDA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "native" / "cuda"


def kernel_source(name: str) -> str:
    """The source of ``native/cuda/<name>.cu`` with its local includes inlined (for NVRTC).

    ``#line`` markers keep compiler messages (and the emulator's barrier and shuffle reports)
    pointing at the original file and line.
    """
    d = cuda_dir()
    seen: set[str] = set()

    def expand(fname: str) -> str:
        out = [f'#line 1 "{fname}"']
        for n, line in enumerate((d / fname).read_text().replace("#pragma once", "").splitlines(), 1):
            m = _INCLUDE.match(line)
            if m is None:
                out.append(line)
                continue
            inc = m.group(1)
            if inc not in seen:
                seen.add(inc)
                out.append(expand(inc))
            out.append(f'#line {n + 1} "{fname}"')
        return "\n".join(out)

    return expand(f"{name}.cu") + "\n"


def emulated() -> bool:
    """Whether ``EDGERUN_CUDA=emulate`` asks for the emulated device (:mod:`edgerun.backends.cuda_emu`)."""
    return os.environ.get("EDGERUN_CUDA", "").strip().lower() == "emulate"


def cupy_module() -> Any:
    """CuPy, or the emulated device with CuPy's shape under ``EDGERUN_CUDA=emulate``."""
    if emulated():
        from edgerun.backends import cuda_emu

        return cuda_emu
    import cupy

    return cupy


def available() -> bool:
    """Whether CuPy imports and sees a CUDA device (or the emulated device can be built)."""
    try:
        if emulated():
            from edgerun.backends import cuda_emu

            cuda_emu.compiler()
            return True
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


@dataclass
class DeviceTensor:
    """A weight resident on the GPU in its block layout."""

    name: str
    qtype: int
    k: int
    n: int
    row_bytes: int
    data: Any  # cupy uint8 (n, row_bytes)


class CudaBackend:
    """Kernels over CuPy; see the module docstring."""

    name = "cuda"

    def __init__(self, device: int = 0, batched_threshold: int = 16, chunk_bytes: int = 256 << 20) -> None:
        cp = cupy_module()
        self.cp = cp
        self.device = cp.cuda.Device(device)
        self.device.use()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.copy_stream = cp.cuda.Stream(non_blocking=True)  # weight streaming, overlapped with compute
        self._registered: dict[int, Any] = {}
        self.batched_threshold = batched_threshold  # B above this: dequantize + cuBLAS
        self.chunk_bytes = chunk_bytes  # max f32 scratch for one dequantized weight chunk
        # large batches on the tensor cores (f16 inputs, f32 accumulation) instead of f32 SGEMM: off by
        # default until measured on a GPU; on the tests' peaked synthetic models it moves logits ~2%
        self.half_gemm = os.environ.get("EDGERUN_CUDA_HALF_GEMM", "0") == "1"
        opts = ("-std=c++17",)
        self._mods = {s: cp.RawModule(code=kernel_source(s), options=opts) for s in SOURCES}
        self._k: dict[str, Any] = {}
        self._weights: dict[int, tuple[QTensor, DeviceTensor]] = {}
        self._vectors: dict[int, tuple[np.ndarray, Any]] = {}
        self._bufs: dict[str, Any] = {}
        self._pinned: dict[str, tuple[Any, np.ndarray]] = {}
        self._rope: dict[tuple[float, float, int], Any] = {}
        self.generation = 0  # bumped whenever a pooled buffer is (re)allocated: captured graphs go stale
        try:
            self.sm_count = int(self.device.attributes["MultiProcessorCount"])
        except Exception:  # an old CuPy without the attribute table: assume a mid-size GPU
            self.sm_count = 64
        self.split_keys = 64  # fewest keys per decode-attention split

    # ------------------------------------------------------------------ plumbing
    def kernel(self, name: str) -> Any:
        """A compiled kernel by name."""
        k = self._k.get(name)
        if k is None:
            mod = "matmul" if name.split("_")[0] in ("mul", "dequant", "get") else None
            if mod is None:
                mod = {"rope_f32": "rope", "kv_write_f16": "kv"}.get(name)
            if mod is None:
                mod = "attention" if name.startswith("attn") else "norm"
            k = self._k[name] = self._mods[mod].get_function(name)
        return k

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]) -> None:
        """Launch kernel ``name`` on the backend's stream (RawKernel launches on the current stream)."""
        k = self.kernel(name)
        with self.stream:
            k(grid, block, args)

    def buf(self, key: str, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
        """A reusable device buffer (grown, never shrunk); contents undefined."""
        cp = self.cp
        n = int(np.prod(shape)) if shape else 1
        dt = np.dtype(dtype)
        cur = self._bufs.get(key)
        if cur is None or cur.size < n or cur.dtype != dt:
            with self.stream:
                cur = self._bufs[key] = cp.empty(max(n, 1), dt)
            self.generation += 1
        return cur[:n].reshape(shape)

    def pinned(self, key: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """A reusable pinned host buffer as a numpy view."""
        cp = self.cp
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) if shape else 1
        cur = self._pinned.get(key)
        if cur is None or cur[1].size < n or cur[1].dtype != dt:
            mem = cp.cuda.alloc_pinned_memory(max(n, 1) * dt.itemsize)
            arr = np.frombuffer(mem, dt, max(n, 1))
            cur = self._pinned[key] = (mem, arr)
            self.generation += 1
        return cur[1][:n].reshape(shape)

    def h2d(self, dst: Any, src: np.ndarray, stream: Any = None) -> None:
        """Async copy of a host array (pinned for true asynchrony) into a device array."""
        src = np.ascontiguousarray(src)
        assert dst.nbytes == src.nbytes and dst.flags.c_contiguous
        s = stream or self.stream
        self.cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, 1, s.ptr)

    def register_host(self, a: np.ndarray) -> bool:
        """Page-lock a host array in place (read-only registration: weights may sit in a file mapping),
        so that copies from it are asynchronous; False when the driver refuses (copies stay staged)."""
        key = a.ctypes.data
        if key in self._registered:
            return self._registered[key] is not None
        try:
            self.cp.cuda.runtime.hostRegister(key, a.nbytes, 8)  # cudaHostRegisterReadOnly
            self._registered[key] = a
        except Exception:
            self._registered[key] = None
        return self._registered[key] is not None

    def event(self, stream: Any) -> Any:
        """An event recorded now on ``stream``."""
        ev = self.cp.cuda.Event(disable_timing=True)
        ev.record(stream)
        return ev

    def d2h(self, dst: np.ndarray, src: Any) -> None:
        """Async copy of a device array into a (pinned) host array; synchronise before reading."""
        assert dst.nbytes == src.nbytes and dst.flags.c_contiguous and src.flags.c_contiguous
        self.cp.cuda.runtime.memcpyAsync(dst.ctypes.data, src.data.ptr, src.nbytes, 2, self.stream.ptr)

    def to_device(self, a: np.ndarray, key: str | None = None) -> Any:
        """Copy a host array to the device (into pooled buffer ``key`` when given)."""
        a = np.ascontiguousarray(a)
        if key is None:
            with self.stream:
                return self.cp.asarray(a)
        d = self.buf(key, a.shape, a.dtype)
        stage = self.pinned(key, a.shape, a.dtype)
        stage[...] = a
        self.h2d(d, stage)
        return d

    def to_host(self, d: Any) -> np.ndarray:
        """Copy a device array to a new host array (synchronises the stream)."""
        out = np.empty(d.shape, d.dtype)
        stage = self.pinned("to_host", d.shape, d.dtype)
        if not d.flags.c_contiguous:
            with self.stream:
                d = self.cp.ascontiguousarray(d)
        self.d2h(stage, d)
        self.stream.synchronize()
        out[...] = stage
        return out

    def synchronize(self) -> None:
        """Wait for all work queued on the stream."""
        self.stream.synchronize()

    # ------------------------------------------------------------------ weights
    def supports(self, op: str, qtype: int) -> bool:
        """Every type of the traits table for ``matmul`` and ``get_rows``."""
        return op in ("matmul", "get_rows") and int(qtype) in TYPE_SUFFIX

    def upload(self, w: QTensor) -> DeviceTensor:
        """The device copy of ``w`` (uploaded on first use, then cached)."""
        hit = self._weights.get(id(w))
        if hit is not None and hit[0] is w:
            return hit[1]
        if int(w.qtype) not in TYPE_SUFFIX:
            raise ValueError(f"cuda backend: unsupported quant type {TRAITS.get(w.qtype, w.qtype)}")
        if w.k % 16:
            raise ValueError(f"cuda backend: {w.name}: K={w.k} is not a multiple of 16")
        rb = row_bytes(w.qtype, w.k) if w.qtype != 0 else 4 * w.k
        host = np.ascontiguousarray(w.data).view(np.uint8).reshape(w.n, rb)
        with self.stream:
            data = self.cp.asarray(host)
        dt = DeviceTensor(w.name, int(w.qtype), w.k, w.n, rb, data)
        self._weights[id(w)] = (w, dt)
        return dt

    def vector(self, a: np.ndarray | None) -> Any:
        """Device copy of a float32 vector (norm weight, bias), cached; None stays None."""
        if a is None:
            return None
        hit = self._vectors.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1]
        with self.stream:
            d = self.cp.asarray(np.ascontiguousarray(a, dtype=np.float32))
        self._vectors[id(a)] = (a, d)
        return d

    def release(self) -> None:
        """Drop cached weights and buffers."""
        self._weights.clear()
        self._vectors.clear()
        self._bufs.clear()

    # ------------------------------------------------------------------ device-level ops
    def mm(self, w: DeviceTensor, x: Any, out: Any = None) -> Any:
        """``x`` (B, K) f32 device -> (B, N) = x @ W^T."""
        cp = self.cp
        b, k = x.shape
        if k != w.k:
            raise ValueError(f"{w.name}: input has {k} features, weight expects {w.k}")
        if out is None:
            with self.stream:
                out = cp.empty((b, w.n), cp.float32)
        sfx = TYPE_SUFFIX[w.qtype]
        if b <= self.batched_threshold:
            warps = 4
            grid = ((w.n + warps - 1) // warps, (b + MM_BT - 1) // MM_BT)
            self.launch(f"mul_mat_{sfx}", grid, (32 * warps,),
                        (w.data, x, out, np.int32(w.n), np.int32(k), np.int32(b), np.int64(w.row_bytes)))
            return out
        if not self.half_gemm:
            # large batch: dequantize row chunks to f32 and multiply with cuBLAS (SGEMM)
            rows = max(1, min(w.n, self.chunk_bytes // (4 * k)))
            scratch = self.buf("mm_deq", (rows, k))
            for n0 in range(0, w.n, rows):
                nr = min(rows, w.n - n0)
                wd = scratch[:nr]
                groups = nr * (k // 16)
                self.launch(f"dequant_{sfx}", ((groups + 255) // 256,), (256,),
                            (w.data[n0: n0 + nr], wd, np.int32(nr), np.int32(k), np.int64(w.row_bytes)))
                with self.stream:
                    if n0 == 0 and nr == w.n:
                        cp.matmul(x, wd.T, out=out)
                    else:
                        out[:, n0: n0 + nr] = cp.matmul(x, wd.T)
            return out
        # half_gemm: dequantize row chunks to f16 and multiply on the tensor cores (cuBLAS gemmEx, f32
        # accumulation and output), the activations rounded to f16 once
        rows = max(1, min(w.n, self.chunk_bytes // (2 * k)))
        scratch = self.buf("mm_deq_h", (rows, k), np.float16)
        xh = self.buf("mm_x_h", (b, k), np.float16)
        with self.stream:
            xh[...] = x
        for n0 in range(0, w.n, rows):
            nr = min(rows, w.n - n0)
            wd = scratch[:nr]
            groups = nr * (k // 16)
            self.launch(f"dequant_h_{sfx}", ((groups + 255) // 256,), (256,),
                        (w.data[n0: n0 + nr], wd, np.int32(nr), np.int32(k), np.int64(w.row_bytes)))
            self.gemm_f16(xh, wd, out, n0)
        return out

    def gemm_f16(self, xh: Any, wh: Any, out: Any, n0: int = 0) -> None:
        """out[:, n0 : n0 + nr] = xh (B, K) f16 @ wh (nr, K) f16 ^T in f32 (tensor cores; out C-contiguous).

        Row-major arrays are column-major transposes, so cuBLAS computes out^T (nr, B) = wh (op T) @ xh^T.
        """
        cp = self.cp
        b, k = (int(s) for s in xh.shape)
        nr = int(wh.shape[0])
        n_total = int(out.shape[1])
        cublas = cp.cuda.cublas
        handle = cp.cuda.device.get_cublas_handle()
        cublas.setStream(handle, self.stream.ptr)
        one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
        cublas.gemmEx(handle, 1, 0, nr, b, k, one.ctypes.data, wh.data.ptr, 2, k, xh.data.ptr, 2, k,
                      zero.ctypes.data, out.data.ptr + 4 * n0, 0, n_total, 68, 99)  # 16F in, 32F out/compute

    def rows_dev(self, w: DeviceTensor, ids: Any, out: Any = None) -> Any:
        """Rows ``ids`` (T,) int32 device of ``w`` -> (T, K) f32."""
        t = int(ids.shape[0])
        if out is None:
            out = self.buf("rows", (t, w.k))
        groups = t * (w.k // 16)
        self.launch(f"get_rows_{TYPE_SUFFIX[w.qtype]}", ((groups + 255) // 256,), (256,),
                    (w.data, ids, out, np.int32(t), np.int32(w.k), np.int64(w.row_bytes)))
        return out

    def rms_norm_dev(self, x: Any, w: Any, eps: float, out: Any = None) -> Any:
        """Row-wise RMSNorm of ``x`` (rows, D) times ``w`` (D,) (None: no weight); ``out`` may be ``x``."""
        d = int(x.shape[-1])
        rows = int(x.size // d)
        if out is None:
            out = self.buf("rms", x.shape)
        threads = min(1024, max(32, 1 << (d - 1).bit_length())) if d < 1024 else 1024
        self.launch("rms_norm_f32", (rows,), (threads,),
                    (x, w if w is not None else np.uint64(0), out, np.int32(rows), np.int32(d),
                     np.float32(eps)))
        return out

    def qk_norm_dev(self, q: Any, k: Any, wq: Any, wk: Any, eps: float) -> None:
        """In-place per-head RMSNorm of q (T, H, hd) with wq and k (T, KVH, hd) with wk, one launch."""
        hd = int(q.shape[-1])
        rq, rk = int(q.size // hd), int(k.size // hd)
        threads = max(32, min(256, 1 << (hd - 1).bit_length()))
        self.launch("qk_norm_f32", (rq + rk,), (threads,),
                    (q, k, wq, wk, np.int32(rq), np.int32(rk), np.int32(hd), np.float32(eps)))

    def rope_table(self, base: float, pos_scale: float, hd: int) -> Any:
        """Device (hd/2, 2) f32: each pair's frequency pos_scale * base^(-2i/hd) as hi + lo floats."""
        key = (float(base), float(pos_scale), int(hd))
        tab = self._rope.get(key)
        if tab is None:
            f = pos_scale * np.power(float(base), -np.arange(0, hd, 2, dtype=np.float64) / hd)
            hi = f.astype(np.float32)
            lo = (f - hi.astype(np.float64)).astype(np.float32)
            with self.stream:
                tab = self._rope[key] = self.cp.asarray(np.stack([hi, lo], axis=1))
        return tab

    def rope_dev(self, x: Any, pos: Any, base: float, neox: bool, pos_scale: float = 1.0) -> None:
        """In-place RoPE of ``x`` (T, H, hd) at positions ``pos`` (T,) int32 device (FP32 angles)."""
        t, h, hd = (int(s) for s in x.shape)
        n = t * h * (hd // 2)
        self.launch("rope_f32", ((n + 255) // 256,), (256,),
                    (x, pos, self.rope_table(base, pos_scale, hd), np.int32(t), np.int32(h), np.int32(hd),
                     np.int32(1 if neox else 0)))

    def kv_write_dev(self, kc: Any, vc: Any, k: Any, v: Any, slots: Any) -> None:
        """Write k, v (T, KVH, hd) f32 into the f16 paged caches (slots, KVH, hd) at ``slots`` (T,) int32."""
        t = int(k.shape[0])
        w = int(k.size // max(t, 1))
        n = t * w
        if n:
            self.launch("kv_write_f16", ((n + 255) // 256,), (256,),
                        (kc, vc, k, v, slots, np.int32(t), np.int32(w)))

    def add_dev(self, a: Any, b: Any, out: Any) -> Any:
        """out = a + b (same shapes)."""
        n = int(a.size)
        self.launch("add_f32", ((n + 255) // 256,), (256,), (a, b, out, np.int64(n)))
        return out

    def add_bias_dev(self, x: Any, bias: Any) -> None:
        """x (rows, D) += bias (D,)."""
        d = int(x.shape[-1])
        n = int(x.size)
        self.launch("add_bias_f32", ((n + 255) // 256,), (256,), (x, bias, np.int32(n // d), np.int32(d)))

    def act_mul_dev(self, g: Any, u: Any, act: str, out: Any) -> Any:
        """out = act(g) * u with act "silu" or "gelu_tanh"."""
        n = int(g.size)
        self.launch("act_mul_f32", ((n + 255) // 256,), (256,),
                    (g, u, out, np.int64(n), np.int32(0 if act == "silu" else 1)))
        return out

    def scale_dev(self, x: Any, s: float) -> None:
        """x *= s in place."""
        n = int(x.size)
        self.launch("scale_f32", ((n + 255) // 256,), (256,), (x, np.float32(s), np.int64(n)))

    def n_split_for(self, max_keys: int, rows: int = 1, heads: int = 1) -> int:
        """Key-range splits for decode attention: enough blocks (heads × rows × splits) to give every SM
        two, but no split shorter than ``split_keys`` keys (its fixed cost would dominate)."""
        fill = math.ceil(2 * self.sm_count / max(1, rows * heads))
        longest = math.ceil(max(1, max_keys) / self.split_keys)
        return max(1, min(64, fill, longest))

    def attention_dev(self, q: Any, kc: Any, vc: Any, q_seq: Any, q_pos: Any, tables: Any, block_size: int,
                      scale: float, window: int, n_split: int, out: Any) -> Any:
        """Paged attention of query rows q (R, H, hd) -> out (R, H * hd) via partials + reduce.

        Caches (slots, KVH, hd) f16; ``tables`` (S, max_blocks) int32; ``q_seq``/``q_pos`` (R,) int32.
        """
        r, h, hd = (int(s) for s in q.shape)
        kvh = int(kc.shape[1])
        if hd > MAX_HEAD_DIM:
            raise ValueError(f"cuda attention: head size {hd} > {MAX_HEAD_DIM}")
        po = self.buf("att_po", (r, h, n_split, hd))
        pm = self.buf("att_pm", (r, h, n_split))
        pl = self.buf("att_pl", (r, h, n_split))
        self.launch("attn_paged_partial", (h, r, n_split), (32 * ATT_WARPS,),
                    (q, kc, vc, q_seq, q_pos, tables, np.int32(tables.shape[1]), np.int32(block_size),
                     np.int32(h), np.int32(kvh), np.int32(hd), np.float32(scale), np.int32(window),
                     po, pm, pl))
        self.launch("attn_reduce", (h, r), (128,),
                    (po, pm, pl, out, np.int32(h), np.int32(hd), np.int32(n_split)))
        return out

    def attention_prefill_dev(self, q: Any, kc: Any, vc: Any, q_pos: Any, table: Any, block_size: int,
                              scale: float, window: int, out: Any) -> Any:
        """Causal attention of T rows of ONE sequence q (T, H, hd) -> out (T, H * hd) (K/V tiles shared)."""
        t, h, hd = (int(s) for s in q.shape)
        kvh = int(kc.shape[1])
        if hd > MAX_HEAD_DIM:
            raise ValueError(f"cuda attention: head size {hd} > {MAX_HEAD_DIM}")
        self.launch("attn_prefill", (h, (t + ATT_PF_ROWS - 1) // ATT_PF_ROWS), (32 * ATT_PF_ROWS,),
                    (q, kc, vc, q_pos, table, np.int32(block_size), np.int32(t), np.int32(h), np.int32(kvh),
                     np.int32(hd), np.float32(scale), np.int32(window), out))
        return out

    # ------------------------------------------------------------------ Backend protocol (numpy)
    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        """``x`` (B, K) float32 -> (B, N) float32 on the GPU."""
        dw = self.upload(w)
        xd = self.to_device(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, w.k))
        with self.stream:
            out = self.cp.empty((xd.shape[0], w.n), self.cp.float32)
        return self.to_host(self.mm(dw, xd, out))

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """Dequantized rows ``ids`` (T,) -> (T, K) float32."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= w.n):
            raise ValueError("row id out of range")
        dw = self.upload(w)
        idd = self.to_device(ids.astype(np.int32))
        with self.stream:
            out = self.cp.empty((ids.size, w.k), self.cp.float32)
        return self.to_host(self.rows_dev(dw, idd, out))

    def rms_norm(self, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """RMSNorm over the last axis (numpy in and out)."""
        xd = self.to_device(np.ascontiguousarray(x, dtype=np.float32))
        with self.stream:
            out = self.cp.empty_like(xd)
        return self.to_host(self.rms_norm_dev(xd, self.vector(w), eps, out))

    def rope(self, x: np.ndarray, pos: np.ndarray, base: float, neox: bool,
             pos_scale: float = 1.0) -> np.ndarray:
        """RoPE of x (T, H, hd) at positions pos (T,) (numpy in and out)."""
        xd = self.to_device(np.ascontiguousarray(x, dtype=np.float32))
        pd = self.to_device(np.asarray(pos, dtype=np.int32))
        self.rope_dev(xd, pd, base, neox, pos_scale)
        return self.to_host(xd)

    def paged_attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, q_seq: np.ndarray,
                        q_pos: np.ndarray, tables: np.ndarray, block_size: int, scale: float, window: int = 0,
                        n_split: int | None = None, prefill: bool = False) -> np.ndarray:
        """Paged attention with numpy in and out (tests): q (R, H, hd), caches (slots, KVH, hd) (stored as
        f16 on the device, as the runner's are)."""
        cp = self.cp
        with self.stream:
            qd = cp.asarray(np.ascontiguousarray(q, np.float32))
            kd = cp.asarray(np.ascontiguousarray(k_cache, np.float16))
            vd = cp.asarray(np.ascontiguousarray(v_cache, np.float16))
            sd = cp.asarray(np.asarray(q_seq, np.int32))
            pd = cp.asarray(np.asarray(q_pos, np.int32))
            td = cp.asarray(np.ascontiguousarray(tables, np.int32))
            out = cp.empty((q.shape[0], q.shape[1] * q.shape[2]), cp.float32)
        if prefill:
            self.attention_prefill_dev(qd, kd, vd, pd, td[int(q_seq[0])], block_size, scale, window, out)
        else:
            ns = n_split or self.n_split_for(int(np.max(q_pos)) + 1, int(q.shape[0]), int(q.shape[1]))
            self.attention_dev(qd, kd, vd, sd, pd, td, block_size, scale, window, ns, out)
        return self.to_host(out)
