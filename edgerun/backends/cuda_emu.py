"""An emulated CUDA device with CuPy's shape: the real ``native/cuda`` kernels run on the CPU.

``EDGERUN_CUDA=emulate`` makes :mod:`edgerun.backends.cuda` use this module instead of CuPy, so
the GPU code path of the hybrid runner (kernels, launches, copies, streams, graphs) runs on a
machine without a GPU: slowly, for tests and debugging. Only the part of CuPy that edgerun uses
is provided; anything else raises ``AttributeError`` rather than doing something approximate.

What it checks, so that the bugs a GPU would punish are caught here too:

* kernels are the ``.cu`` sources compiled for the host with g++ and ``native/cuda/emu/cuda_emu.h``
  (threads as fibers, block barriers and warp shuffles checked; see that header), cached by the
  hash of the sources in ``$EDGERUN_CACHE_DIR/cuda_emu`` (default ``~/.cache/edgerun/cuda_emu``);
* each launch argument against the kernel's parameter types parsed from its signature: a device
  array for a pointer (element type checked), a numpy scalar of exactly the parameter's type for a
  scalar (an ``np.int32`` for an ``i64`` parameter is an error, as is a Python ``int``);
* fresh allocations are filled with 0xFF bytes (NaN as float, -1 as int) and surrounded by guard
  zones that are checked after every launch and copy that touches them;
* one stream: launches, copies from and to pinned memory and array operations are queued and run
  at a synchronize (or a blocking copy), in order; copies to pageable host memory synchronize, as
  CUDA's do; ``begin_capture``/``end_capture`` record the queued work into a graph that
  ``launch`` replays; allocating or synchronizing while capturing is an error, as in CUDA;
* implicit conversion of a device array to numpy raises ``TypeError`` (as in CuPy).

Time spent inside kernels and copies is accumulated in :data:`stats` so that the host-side
(Python) cost of a step can be measured with the kernel time taken out.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

float16, float32, float64 = np.float16, np.float32, np.float64
int8, int16, int32, int64 = np.int8, np.int16, np.int32, np.int64
uint8, uint16, uint32, uint64 = np.uint8, np.uint16, np.uint32, np.uint64

GUARD = 256  # bytes of guard zone on each side of an allocation
ALIGN = 256  # device allocations are 256-byte aligned, as cudaMalloc's
FILL = 0xFF  # fresh allocations: NaN as float32/float16, -1 as any integer
GUARD_FILL = 0xA5
EMU_HEADER = Path(__file__).resolve().parents[2] / "native" / "cuda" / "emu" / "cuda_emu.h"


class CUDARuntimeError(RuntimeError):
    """A CUDA API misuse or a failed kernel, with the reason (kernel, block and threads when known)."""


@dataclass
class Stats:
    """Accumulated device-side time (seconds) and counts."""

    kernel_s: float = 0.0
    copy_s: float = 0.0
    device_s: float = 0.0  # thread CPU time running queued work (kernels, copies, array operations)
    api_s: float = 0.0  # thread CPU time inside the emulator's API calls, device time excluded
    api_calls: dict[str, int] = field(default_factory=dict)  # API calls by kind
    time_api: bool = False  # also time the API calls (api_s; costs two clock reads per call)
    launches: int = 0
    copies: int = 0
    per_kernel: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        """Zero every counter."""
        self.kernel_s = self.copy_s = self.device_s = self.api_s = 0.0
        self.api_calls.clear()
        self.launches = self.copies = 0
        self.per_kernel.clear()


stats = Stats()


# ----------------------------------------------------------------------------- memory


class _Mem:
    """One device allocation: numpy bytes with guard zones either side, 256-byte aligned data."""

    __slots__ = ("raw", "start", "nbytes", "ptr", "__weakref__")

    def __init__(self, nbytes: int, fill: int | None = FILL) -> None:
        _check_not_capturing("device memory allocation")
        self.raw = np.empty(nbytes + 2 * GUARD + ALIGN, np.uint8)
        base = self.raw.ctypes.data
        self.start = GUARD + (-(base + GUARD)) % ALIGN
        self.nbytes = nbytes
        self.ptr = base + self.start
        self.raw[:] = GUARD_FILL
        if fill is not None:
            self.raw[self.start: self.start + nbytes] = fill
        _device.allocated += nbytes
        _live[id(self)] = weakref.ref(self)
        weakref.finalize(self, _forget, id(self), nbytes)

    def check(self, what: str) -> None:
        """Raise when a guard zone was written (an out-of-bounds write by ``what``)."""
        lo = self.raw[: self.start]
        hi = self.raw[self.start + self.nbytes:]
        if (lo != GUARD_FILL).any() or (hi != GUARD_FILL).any():
            bad_lo = np.flatnonzero(lo != GUARD_FILL)
            bad_hi = np.flatnonzero(hi != GUARD_FILL)
            where = (f"{len(bad_lo)} byte(s) before the start" if len(bad_lo) else "") + (
                f"{', ' if len(bad_lo) else ''}{len(bad_hi)} byte(s) after the end (first at +{bad_hi[0]})"
                if len(bad_hi) else "")
            self.raw[: self.start] = GUARD_FILL
            self.raw[self.start + self.nbytes:] = GUARD_FILL
            raise CUDARuntimeError(f"{what}: out-of-bounds write into the guard zone of a {self.nbytes}-byte "
                                   f"allocation: {where}")


_live: dict[int, weakref.ref] = {}


def _api(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Count a CuPy-API call of ``kind`` (outermost call only) and, with ``stats.time_api``, its time
    without the device time, so that the host cost of a step can be split into caller and API."""
    import functools

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*a: Any, **k: Any) -> Any:
            if getattr(_tls, "in_api", False):
                return fn(*a, **k)
            stats.api_calls[kind] = stats.api_calls.get(kind, 0) + 1
            if not stats.time_api:  # a CPU-time clock read is a system call: only when asked
                return fn(*a, **k)
            _tls.in_api = True
            t0, d0 = time.thread_time(), stats.device_s
            try:
                return fn(*a, **k)
            finally:
                _tls.in_api = False
                stats.api_s += time.thread_time() - t0 - (stats.device_s - d0)
        return wrapped
    return deco


def _forget(key: int, nbytes: int) -> None:
    _live.pop(key, None)
    _device.allocated -= nbytes


def _find_mem(ptr: int, n: int) -> _Mem:
    for ref in list(_live.values()):
        m = ref()
        if m is not None and m.ptr <= ptr < m.ptr + max(m.nbytes, 1):
            if ptr + n > m.ptr + m.nbytes:
                raise CUDARuntimeError(f"copy of {n} bytes at offset {ptr - m.ptr} overruns a "
                                       f"{m.nbytes}-byte device allocation")
            return m
    raise CUDARuntimeError(f"address {ptr:#x} is not in any live device allocation")


_pinned: dict[Any, tuple[int, int, Any]] = {}  # key -> (address, size, liveness check)


def _is_pinned(ptr: int, n: int) -> bool:
    for lo, size, ref in list(_pinned.values()):
        if ref() is not None and lo <= ptr and ptr + n <= lo + size:
            return True
    return False


def alloc_pinned_memory(nbytes: int) -> np.ndarray:
    """Page-locked host memory (emulated: registered host bytes that copies may read late)."""
    mem = np.empty(max(int(nbytes), 1), np.uint8)
    key = id(mem)
    _pinned[key] = (mem.ctypes.data, mem.nbytes, weakref.ref(mem))
    weakref.finalize(mem, _pinned.pop, key, None)
    return mem


# ----------------------------------------------------------------------------- streams and graphs


_streams: weakref.WeakValueDictionary[int, Stream] = weakref.WeakValueDictionary()


class Graph:
    """A captured sequence of stream operations, replayed by :meth:`launch`."""

    def __init__(self, ops: list[tuple[Callable[[], None], tuple[Any, ...]]]) -> None:
        self.ops = ops

    @_api("graph_launch")
    def launch(self, stream: Stream | None = None) -> None:
        """Enqueue the captured work on ``stream`` (default: the current stream)."""
        s = stream or _current_stream()
        for fn, refs in self.ops:
            s._enqueue(fn, refs)
        key = "kernel_launch_in_graphs"  # graph nodes replayed (about 1 us each with CuPy)
        stats.api_calls[key] = stats.api_calls.get(key, 0) + len(self.ops)


class Stream:
    """The emulated stream: queued work runs in order at :meth:`synchronize`."""

    _ids = 0

    def __init__(self, non_blocking: bool = False, null: bool = False) -> None:
        Stream._ids += 1
        self.ptr = 0 if null else Stream._ids
        self._capture: list[tuple[Callable[[], None], tuple[Any, ...]]] | None = None
        if not null:
            _streams[self.ptr] = self

    def __enter__(self) -> Stream:
        _tls.stack = [*getattr(_tls, "stack", []), self]
        return self

    def __exit__(self, *exc: Any) -> bool:
        _tls.stack.pop()
        return False

    def use(self) -> Stream:
        """Make this the current stream of the thread."""
        _tls.stack = [self]
        return self

    def _enqueue(self, fn: Callable[[], None], refs: tuple[Any, ...] = ()) -> None:
        if self._capture is not None:
            self._capture.append((fn, refs))
        else:
            with _device.lock:
                _device.queue.append((fn, refs))

    @_api("synchronize")
    def synchronize(self) -> None:
        """Run every queued operation (of every stream: the device has one queue)."""
        if self._capture is not None:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: synchronize on a capturing stream")
        _device.flush()

    def begin_capture(self, mode: Any = None) -> None:
        """Start recording this stream's work into a graph."""
        if self._capture is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is already capturing")
        self._capture = []
        _device.capturing += 1

    def end_capture(self) -> Graph:
        """Stop recording; the graph of the recorded work."""
        if self._capture is None:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnmatched: end_capture without begin_capture")
        ops, self._capture = self._capture, None
        _device.capturing -= 1
        return Graph(ops)

    def wait_event(self, event: Event) -> None:
        """Later work on this stream waits for ``event`` (the single queue already runs in order)."""
        if not isinstance(event, Event):
            raise CUDARuntimeError("wait_event needs an Event")

    @property
    def is_capturing(self) -> bool:
        """Whether work is being recorded."""
        return self._capture is not None


class Event:
    """A stream event: the emulator's one queue runs work in the order it was queued, which every
    event dependency allows, so recording and waiting only check their use."""

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self.recorded = False

    def record(self, stream: Stream | None = None) -> None:
        """Mark the point of ``stream`` (default: the current stream)."""
        self.recorded = True

    def synchronize(self) -> None:
        """Wait for the work before the recorded point."""
        _device.flush()


class _Device:
    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], None], tuple[Any, ...]]] = []
        self.lock = threading.RLock()
        self.allocated = 0
        self.capturing = 0

    def flush(self) -> None:
        with self.lock:
            t0 = time.thread_time()  # CPU time of this thread: other tenants of the machine do not count
            try:
                self._run()
            finally:
                stats.device_s += time.thread_time() - t0

    def _run(self) -> None:
        with self.lock:
            while self.queue:
                ops, self.queue = self.queue, []
                for i, (fn, _) in enumerate(ops):
                    try:
                        fn()
                    except BaseException:
                        self.queue = []  # the device is in an error state: drop the rest, as CUDA would
                        del ops[i:]
                        raise


_device = _Device()
_tls = threading.local()
_null_stream = Stream(null=True)


def _current_stream() -> Stream:
    st = getattr(_tls, "stack", None)
    return st[-1] if st else _null_stream


def _check_not_capturing(what: str) -> None:
    if _device.capturing:
        raise CUDARuntimeError(f"cudaErrorStreamCaptureUnsupported: {what} while a stream is capturing")


def get_current_stream() -> Stream:
    """The stream of the innermost ``with stream:`` block (the null stream outside any)."""
    return _current_stream()


# ----------------------------------------------------------------------------- arrays


class _Flags:
    def __init__(self, a: ndarray) -> None:
        v = a._host()
        self.c_contiguous = bool(v.flags.c_contiguous)
        self.f_contiguous = bool(v.flags.f_contiguous)


class ndarray:  # noqa: N801 - CuPy's name
    """A device array: a view (offset, shape, strides, dtype) of one emulated allocation."""

    __slots__ = ("_mem", "_off", "shape", "strides", "dtype")

    def __init__(self, shape: Sequence[int] | int, dtype: Any = np.float32, *, _mem: _Mem | None = None,
                 _off: int = 0, _strides: tuple[int, ...] | None = None, _fill: int | None = FILL) -> None:
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.shape = shape
        if _mem is None:
            _mem = _Mem(int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize, _fill)
        self._mem, self._off = _mem, _off
        if _strides is None:  # C order
            _strides = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) * self.dtype.itemsize
                             for i in range(len(shape)))
        self.strides = tuple(_strides)

    # --- the host view (for the queued operations only)
    def _host(self) -> np.ndarray:
        m = self._mem
        return np.ndarray(self.shape, self.dtype, buffer=m.raw, offset=m.start + self._off,
                          strides=self.strides)

    @classmethod
    def _view_of(cls, parent: ndarray, v: np.ndarray) -> ndarray:
        off = v.__array_interface__["data"][0] - parent._mem.ptr if v.size else parent._off
        return cls(v.shape, v.dtype, _mem=parent._mem, _off=off, _strides=v.strides)

    # --- properties
    @property
    @_api("array_attr")
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    @_api("array_attr")
    def ndim(self) -> int:
        return len(self.shape)

    @property
    @_api("array_attr")
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    @_api("array_attr")
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    @_api("array_attr")
    def flags(self) -> _Flags:
        return _Flags(self)

    @property
    @_api("array_attr")
    def data(self) -> SimpleNamespace:
        """``.ptr``: the device address of the first element."""
        return SimpleNamespace(ptr=self._mem.ptr + self._off, mem=self._mem)

    @property
    @_api("array_attr")
    def T(self) -> ndarray:  # noqa: N802 - numpy's name
        return self._view_of(self, self._host().T)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<emulated device array shape={self.shape} dtype={self.dtype}>"

    def __array__(self, *a: Any, **k: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                        "construct a NumPy array explicitly.")

    # --- views
    @_api("array_view")
    def reshape(self, *shape: Any) -> ndarray:
        """A view with a new shape (C-contiguous arrays only)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not self._host().flags.c_contiguous:
            raise ValueError("emulated device: reshape of a non-contiguous array (copy it first)")
        return self._view_of(self, self._host().reshape(shape))

    def ravel(self) -> ndarray:
        """A flat view (contiguous arrays only)."""
        return self.reshape(-1)

    def view(self, dtype: Any) -> ndarray:
        """The same bytes as another dtype."""
        return self._view_of(self, self._host().view(dtype))

    @_api("array_view")
    def __getitem__(self, key: Any) -> ndarray:
        if _is_advanced(key):
            src = self
            probe = self._host()[_host_key(key, probe=True)]
            out = ndarray(probe.shape, self.dtype)
            _current_stream()._enqueue(lambda: _set(out._host(), ..., src._host()[_host_key(key)]),
                                       (src, out, key))
            return out
        return self._view_of(self, self._host()[key])

    @_api("array_op")
    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, ndarray):
            dst = self
            _current_stream()._enqueue(lambda: _set(dst._host(), _host_key(key), value._host()),
                                       (dst, value, key))
            return
        snap = np.array(value, copy=True)
        dst = self
        _current_stream()._enqueue(lambda: _set(dst._host(), _host_key(key), snap), (dst,))

    # --- operations (queued on the current stream)
    def get(self, stream: Stream | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """A host copy (synchronizes the device first)."""
        _check_not_capturing("a blocking copy to the host")
        _device.flush()
        host = self._host().copy()
        if out is not None:
            out[...] = host
            return out
        return host

    def copy(self) -> ndarray:
        """A new C-contiguous device copy."""
        return ascontiguousarray(self, force=True)

    def astype(self, dtype: Any, copy: bool = True) -> ndarray:
        """A converted device copy."""
        dt = np.dtype(dtype)
        if dt == self.dtype and not copy:
            return self
        src = self
        out = ndarray(self.shape, dt)
        _current_stream()._enqueue(lambda: _set(out._host(), ..., src._host().astype(dt)), (src, out))
        return out

    def fill(self, value: Any) -> None:
        """Set every element (queued)."""
        self[...] = value


def _set(dst: np.ndarray, key: Any, value: Any) -> None:
    dst[key] = value


def _is_advanced(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (ndarray, np.ndarray, list)) for k in keys)


def _host_key(key: Any, probe: bool = False) -> Any:
    def one(k: Any) -> Any:
        if isinstance(k, ndarray):
            return np.zeros(k.shape, np.intp) if probe else k._host()
        return k

    return tuple(one(k) for k in key) if isinstance(key, tuple) else one(key)


@_api("alloc")
def empty(shape: Any, dtype: Any = np.float32) -> ndarray:
    """A fresh allocation filled with the NaN/-1 pattern (as uninitialised GPU memory could be)."""
    return ndarray(shape, dtype)


@_api("alloc")
def zeros(shape: Any, dtype: Any = np.float32) -> ndarray:
    """A zero-filled allocation."""
    return ndarray(shape, dtype, _fill=0)


def empty_like(a: ndarray, dtype: Any = None) -> ndarray:
    """:func:`empty` of ``a``'s shape."""
    return empty(a.shape, dtype or a.dtype)


def zeros_like(a: ndarray, dtype: Any = None) -> ndarray:
    """:func:`zeros` of ``a``'s shape."""
    return zeros(a.shape, dtype or a.dtype)


@_api("alloc")
def asarray(a: Any, dtype: Any = None) -> ndarray:
    """A device array of ``a`` (a device array is returned as is, or converted)."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    h = np.ascontiguousarray(np.asarray(a, dtype=dtype))
    out = ndarray(h.shape, h.dtype, _fill=None)
    out._host()[...] = h  # a fresh allocation: no queued work can touch it yet
    stats.copies += 1
    return out


array = asarray


@_api("array_op")
def ascontiguousarray(a: ndarray, force: bool = False) -> ndarray:
    """``a`` if C-contiguous, else a contiguous copy (queued)."""
    if not isinstance(a, ndarray):
        return asarray(np.ascontiguousarray(a))
    if not force and a._host().flags.c_contiguous:
        return a
    out = ndarray(a.shape, a.dtype)
    _current_stream()._enqueue(lambda: _set(out._host(), ..., a._host()), (a, out))
    return out


@_api("array_op")
def matmul(a: ndarray, b: ndarray, out: ndarray | None = None) -> ndarray:
    """``a @ b`` on the stream (cuBLAS: half inputs accumulate in float32)."""
    shape = np.matmul(np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), a.shape, (0,) * a.ndim),
                      np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), b.shape, (0,) * b.ndim)).shape
    dt = np.result_type(a.dtype, b.dtype)
    if out is None:
        out = ndarray(shape, dt)
    elif out.shape != tuple(shape):
        raise ValueError(f"matmul: out has shape {out.shape}, expected {tuple(shape)}")
    res = out

    def run() -> None:
        t0 = time.perf_counter()
        x, y = a._host(), b._host()
        if x.dtype == np.float16 or y.dtype == np.float16:
            r = np.matmul(x.astype(np.float32), y.astype(np.float32))
        else:
            r = np.matmul(x, y)
        res._host()[...] = r
        stats.kernel_s += time.perf_counter() - t0
        stats.launches += 1

    _current_stream()._enqueue(run, (a, b, res))
    return res


# ----------------------------------------------------------------------------- runtime and device


@_api("memcpy")
def _memcpy_async(dst: int, src: int, n: int, kind: int, stream: int) -> None:
    s = _stream_by_ptr(stream)
    n = int(n)
    if kind == 1:  # host -> device
        m = _find_mem(dst, n)
        if _is_pinned(src, n):
            def run() -> None:
                ctypes.memmove(dst, src, n)
                stats.copies += 1
                m.check("host-to-device copy")
            s._enqueue(run, (m,))
        else:  # pageable: CUDA stages the source before returning
            snap = ctypes.string_at(src, n)

            def run_snap() -> None:
                ctypes.memmove(dst, snap, n)
                stats.copies += 1
            s._enqueue(run_snap, (m, snap))
    elif kind == 2:  # device -> host
        m = _find_mem(src, n)
        if _is_pinned(dst, n):
            def run2() -> None:
                ctypes.memmove(dst, src, n)
                stats.copies += 1
            s._enqueue(run2, (m,))
        else:  # pageable: returns when the copy is done
            if s._capture is not None:
                raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: copy to pageable host memory "
                                       "while capturing")
            _device.flush()
            ctypes.memmove(dst, src, n)
            stats.copies += 1
    elif kind == 3:
        md, ms = _find_mem(dst, n), _find_mem(src, n)

        def run3() -> None:
            ctypes.memmove(dst, src, n)
            md.check("device-to-device copy")
        s._enqueue(run3, (md, ms))
    else:
        raise CUDARuntimeError(f"memcpyAsync: unsupported kind {kind}")


def _stream_by_ptr(ptr: int) -> Stream:
    if ptr == 0:
        return _null_stream
    s = _streams.get(int(ptr))
    if s is None:
        raise CUDARuntimeError(f"unknown stream handle {ptr}")
    return s


def vram_bytes() -> int:
    """The emulated device's memory: ``EDGERUN_CUDA_EMU_VRAM_GB`` (default 24 GiB, an RTX 4090)."""
    return int(float(os.environ.get("EDGERUN_CUDA_EMU_VRAM_GB", "24")) * (1 << 30))


def sm_count() -> int:
    """The emulated device's SM count: ``EDGERUN_CUDA_EMU_SMS`` (default 128, an RTX 4090)."""
    return int(os.environ.get("EDGERUN_CUDA_EMU_SMS", "128"))


EMU_UUID = "GPU-00000000-0000-0000-0000-00000000e4e4"
EMU_PCI_BUS_ID = "00000000:E4:00.0"


def _properties(i: int = 0) -> dict[str, Any]:
    if i != 0:
        raise CUDARuntimeError(f"cudaErrorInvalidDevice: device {i} (the emulator has one)")
    return {"name": b"edgerun emulated CUDA device", "totalGlobalMem": vram_bytes(),
            "multiProcessorCount": sm_count(), "major": 8, "minor": 9, "pciBusID": 0xE4, "pciDeviceID": 0,
            "pciDomainID": 0, "uuid": bytes(14) + b"\xe4\xe4"}


def _host_register(ptr: int, size: int, flags: int = 0) -> None:
    """Page-lock existing host memory: copies from it may then be read when they run."""
    _pinned[("registered", int(ptr))] = (int(ptr), int(size), lambda: True)  # type: ignore[index]


def _host_unregister(ptr: int) -> None:
    _pinned.pop(("registered", int(ptr)), None)  # type: ignore[call-overload]


def _mem_get_info() -> tuple[int, int]:
    total = vram_bytes()
    return max(0, total - _device.allocated), total


runtime = SimpleNamespace(
    getDeviceCount=lambda: 1,
    memcpyAsync=_memcpy_async,
    getDeviceProperties=_properties,
    memGetInfo=_mem_get_info,
    hostRegister=_host_register,
    hostUnregister=_host_unregister,
    deviceSynchronize=lambda: _device.flush(),
    CUDARuntimeError=CUDARuntimeError,
)


class Device:
    """The one emulated device."""

    def __init__(self, device: int = 0) -> None:
        _properties(device)
        self.id = device

    def use(self) -> None:
        """Make it current (there is only one)."""

    def synchronize(self) -> None:
        """Run all queued work."""
        _device.flush()

    @property
    def attributes(self) -> dict[str, int]:
        return {"MultiProcessorCount": sm_count(), "ComputeCapabilityMajor": 8, "ComputeCapabilityMinor": 9}

    @property
    def compute_capability(self) -> str:
        return "89"

    @property
    def pci_bus_id(self) -> str:
        return EMU_PCI_BUS_ID

    @property
    def mem_info(self) -> tuple[int, int]:
        return _mem_get_info()


_CUDA_TYPES = {0: np.float32, 2: np.float16}  # cudaDataType: CUDA_R_32F, CUDA_R_16F


def _colmajor(ptr: int, rows: int, cols: int, ld: int, dt: Any) -> np.ndarray:
    """(rows, cols) view of a column-major matrix at device address ``ptr`` with leading dimension ld."""
    it = np.dtype(dt).itemsize
    if ld < rows:
        raise CUDARuntimeError(f"cuBLAS: leading dimension {ld} < rows {rows}")
    m = _find_mem(ptr, (ld * (cols - 1) + rows) * it)
    return np.ndarray((cols, rows), dt, buffer=m.raw, offset=m.start + (ptr - m.ptr), strides=(ld * it, it)).T


@_api("kernel_launch")
def _gemm_ex(handle: int, transa: int, transb: int, m: int, n: int, k: int, alpha: int, a: int, atype: int,
             lda: int, b: int, btype: int, ldb: int, beta: int, c: int, ctype: int, ldc: int, compute: int,
             algo: int) -> None:
    """cublasGemmEx (column-major C = alpha op(A) op(B) + beta C), f16/f32 inputs, f32 accumulation."""
    if atype not in _CUDA_TYPES or btype not in _CUDA_TYPES or ctype not in _CUDA_TYPES:
        raise CUDARuntimeError(f"gemmEx: data types {atype}/{btype}/{ctype} are not emulated")
    al = float(np.frombuffer(ctypes.string_at(alpha, 4), np.float32)[0])
    be = float(np.frombuffer(ctypes.string_at(beta, 4), np.float32)[0])
    ar, ac = (k, m) if transa else (m, k)
    br, bc = (n, k) if transb else (k, n)
    s = _cublas_streams.get(handle, _null_stream)
    _colmajor(a, ar, ac, lda, _CUDA_TYPES[atype])  # bounds checked now, as a launch's arguments
    _colmajor(b, br, bc, ldb, _CUDA_TYPES[btype])
    _colmajor(c, m, n, ldc, _CUDA_TYPES[ctype])

    def run() -> None:
        t0 = time.perf_counter()
        am = _colmajor(a, ar, ac, lda, _CUDA_TYPES[atype]).astype(np.float32)
        bm = _colmajor(b, br, bc, ldb, _CUDA_TYPES[btype]).astype(np.float32)
        cm = _colmajor(c, m, n, ldc, _CUDA_TYPES[ctype])
        r = al * ((am.T if transa else am) @ (bm.T if transb else bm))
        cm[...] = r + be * cm if be else r
        stats.kernel_s += time.perf_counter() - t0
        stats.launches += 1

    s._enqueue(run, ())


_cublas_streams: dict[int, Stream] = {}


def _cublas_set_stream(handle: int, stream_ptr: int) -> None:
    _cublas_streams[handle] = _stream_by_ptr(stream_ptr)


cublas = SimpleNamespace(gemmEx=_gemm_ex, setStream=_cublas_set_stream, CUBLAS_OP_N=0, CUBLAS_OP_T=1)
device = SimpleNamespace(get_cublas_handle=lambda: 1)
cuda = SimpleNamespace(Device=Device, Stream=Stream, Graph=Graph, Event=Event, runtime=runtime, cublas=cublas,
                       device=device,
                       alloc_pinned_memory=alloc_pinned_memory, get_current_stream=get_current_stream)


# ----------------------------------------------------------------------------- kernels

# parameter type (typedefs of common.cuh included) -> (numpy dtype of a scalar, element kind of a pointer)
_SCALARS: dict[str, str] = {
    "int": "int32", "signed": "int32", "signed int": "int32", "unsigned": "uint32", "unsigned int": "uint32",
    "u32": "uint32", "i64": "int64", "long long": "int64", "long long int": "int64",
    "unsigned long long": "uint64", "float": "float32", "double": "float64", "short": "int16",
    "u16": "uint16", "unsigned short": "uint16", "char": "int8", "signed char": "int8", "i8": "int8",
    "u8": "uint8", "unsigned char": "uint8", "bool": "bool",
    "float2": "float32", "float4": "float32", "int2": "int32", "int4": "int32", "uint2": "uint32",
    "uint4": "uint32", "__half": "float16", "half": "float16",
}
_BYTE_POINTEES = {"void", "u8", "i8", "char", "unsigned char", "signed char", "uchar4", "char4"}
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)


@dataclass(frozen=True)
class Param:
    """One kernel parameter as declared."""

    name: str
    base: str  # type without qualifiers and stars, typedef names kept ("float", "u8", "i64")
    pointer: bool

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the scalar (or of the pointee)."""
        return np.dtype(_SCALARS[self.base])

    def __str__(self) -> str:
        return f"{self.base}{'*' if self.pointer else ''} {self.name}"


def parse_params(text: str) -> list[Param]:
    """Parameters of a kernel signature's parameter list."""
    out = []
    for raw in (p.strip() for p in text.split(",")):
        if not raw or raw == "void":
            continue
        pointer = "*" in raw
        words = re.findall(r"[A-Za-z_]\w*", raw)
        words = [w for w in words if w not in ("const", "volatile", "__restrict__", "restrict", "__restrict")]
        name, base = words[-1], " ".join(words[:-1])
        if base not in _SCALARS and not (pointer and base in _BYTE_POINTEES):
            raise CUDARuntimeError(f"emulated device: parameter type '{base}' of '{raw}' is not known")
        out.append(Param(name, base, pointer))
    return out


def cache_dir() -> Path:
    """Where built kernel libraries are kept (``$EDGERUN_CACHE_DIR/cuda_emu``)."""
    root = os.environ.get("EDGERUN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "edgerun")
    return Path(root) / "cuda_emu"


def compiler() -> str:
    """The host C++ compiler (``$CXX`` or g++); CUDARuntimeError when there is none."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise CUDARuntimeError("EDGERUN_CUDA=emulate needs a host C++ compiler (g++) to build the CUDA "
                               "kernels for the CPU; none found (set CXX)")
    return cxx


_CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-w", "-fno-exceptions")


def build(code: str) -> tuple[Path, dict[str, list[Param]]]:
    """Compile kernel source ``code`` for the host (cached by hash); (library, kernel -> params)."""
    cxx = compiler()
    header = EMU_HEADER.read_text()
    key = hashlib.sha256("\0".join([code, header, cxx, *_CXXFLAGS]).encode()).hexdigest()[:24]
    d = cache_dir() / key
    lib, meta = d / "kernels.so", d / "kernels.json"
    if lib.is_file() and meta.is_file():
        sigs = json.loads(meta.read_text())
        return lib, {k: [Param(*p) for p in v] for k, v in sigs.items()}
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        src = Path(tmp) / "module.cu"
        src.write_text(code)
        pre = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-std=c++17", str(src)], capture_output=True,
                             text=True, timeout=300)
        if pre.returncode:
            raise CUDARuntimeError(f"emulated device: preprocessing failed:\n{pre.stderr[-4000:]}")
        kernels = {m.group(1): parse_params(m.group(2)) for m in _KERNEL_RE.finditer(pre.stdout)}
        if not kernels:
            raise CUDARuntimeError('emulated device: no extern "C" __global__ kernel in the source')
        wrap = [code, "\n// ---- launch entries (edgerun.backends.cuda_emu)"]
        for k in kernels:
            wrap.append(
                f"static void emu_body_{k}(void** a) {{ emu::call({k}, a); }}\n"
                f'extern "C" __attribute__((visibility("default"))) int emu_launch_{k}(const unsigned* g, '
                f"const unsigned* b, unsigned shared, void** a) {{ return emu::launch(\"{k}\", emu_body_{k}, "
                f"g, b, shared, a); }}\n"
                f'extern "C" __attribute__((visibility("default"))) int emu_nparams_{k}() '
                f"{{ return emu::n_params({k}); }}\n"
                f'extern "C" __attribute__((visibility("default"))) void emu_psizes_{k}(int* o) '
                f"{{ emu::param_sizes({k}, o); }}")
        src.write_text("\n".join(wrap) + "\n")
        out = Path(tmp) / "kernels.so"
        cmd = [cxx, *_CXXFLAGS, "-include", str(EMU_HEADER), "-x", "c++", str(src), "-o", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode:
            raise CUDARuntimeError(f"emulated device: g++ failed:\n{r.stderr[-4000:]}")
        (Path(tmp) / "kernels.json").write_text(json.dumps(
            {k: [[p.name, p.base, p.pointer] for p in v] for k, v in kernels.items()}))
        os.replace(out, lib)  # atomic: concurrent builders of the same key agree
        os.replace(Path(tmp) / "kernels.json", meta)
    return lib, kernels


class RawKernel:
    """One kernel of a :class:`RawModule`; called as ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, module: RawModule, name: str) -> None:
        if name not in module._sigs:
            raise CUDARuntimeError(f"no kernel named '{name}' in the module "
                                   f"(has {', '.join(sorted(module._sigs))})")
        self.name = name
        self.params = module._sigs[name]
        self._fn = getattr(module._lib, f"emu_launch_{name}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_uint,
                             ctypes.POINTER(ctypes.c_void_p)]
        nparams = getattr(module._lib, f"emu_nparams_{name}")()
        sizes = (ctypes.c_int * max(nparams, 1))()
        getattr(module._lib, f"emu_psizes_{name}")(sizes)
        if nparams != len(self.params):
            raise CUDARuntimeError(f"{name}: parsed {len(self.params)} parameters, the compiler sees "
                                   f"{nparams}")
        for p, s in zip(self.params, sizes, strict=False):
            want = 8 if p.pointer else p.dtype.itemsize
            if s != want:
                raise CUDARuntimeError(f"{name}: parameter {p} is {s} bytes for the compiler, {want} parsed")
        self._error = module._lib.emu_error
        self._error.restype = ctypes.c_char_p

    def _pack(self, args: Sequence[Any]) -> tuple[list[Any], list[_Mem]]:
        if len(args) != len(self.params):
            raise CUDARuntimeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters "
                                   f"({', '.join(map(str, self.params))})")
        vals: list[Any] = []
        mems: list[_Mem] = []
        for i, (p, a) in enumerate(zip(self.params, args, strict=True)):
            where = f"{self.name}: argument {i} for parameter '{p}'"
            if p.pointer:
                if isinstance(a, ndarray):
                    if p.base not in _BYTE_POINTEES:
                        want = p.dtype
                        ok = a.dtype.itemsize == want.itemsize and (
                            a.dtype.kind == want.kind or (want.kind in "iu" and a.dtype.kind in "iu")
                            or (p.base == "u16" and a.dtype == np.float16))
                        if not ok:
                            raise CUDARuntimeError(f"{where} is a {a.dtype} array")
                    vals.append(ctypes.c_void_p(a.data.ptr))
                    mems.append(a._mem)
                elif a is None or (isinstance(a, np.integer) and a.dtype.itemsize == 8 and int(a) == 0):
                    vals.append(ctypes.c_void_p(0))
                else:
                    raise CUDARuntimeError(f"{where} is {type(a).__name__}, not a device array")
                continue
            want = p.dtype
            if not isinstance(a, np.generic):
                raise CUDARuntimeError(f"{where} is a Python {type(a).__name__}: pass np.{want} (its width "
                                       "must match the parameter)")
            if a.dtype != want:
                raise CUDARuntimeError(f"{where} is {a.dtype}, the kernel reads {want} "
                                       f"({want.itemsize} bytes)")
            ctype = np.ctypeslib.as_ctypes_type(want) if want != np.bool_ else ctypes.c_bool
            vals.append(ctype(a.item()))
        return vals, mems

    @_api("kernel_launch")
    def __call__(self, grid: Sequence[int] | int, block: Sequence[int] | int, args: Sequence[Any], *,
                 shared_mem: int = 0, stream: Stream | None = None) -> None:
        g = _dim3(grid, "grid")
        b = _dim3(block, "block")
        vals, mems = self._pack(args)
        argv = (ctypes.c_void_p * max(len(vals), 1))(*[ctypes.addressof(v) for v in vals])
        gd, bd = (ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b)
        name, fn, err = self.name, self._fn, self._error
        shm = int(shared_mem)

        def run() -> None:
            t0 = time.perf_counter()
            rc = fn(gd, bd, shm, argv)
            dt = time.perf_counter() - t0
            stats.kernel_s += dt
            stats.launches += 1
            stats.per_kernel[name] = stats.per_kernel.get(name, 0.0) + dt
            if rc:
                raise CUDARuntimeError(err().decode(errors="replace"))
            for m in mems:
                m.check(f"kernel {name} grid {g} block {b}")

        (stream or _current_stream())._enqueue(run, (vals, argv, gd, bd, mems, args))


def _dim3(v: Sequence[int] | int, what: str) -> tuple[int, int, int]:
    t = (int(v),) if np.isscalar(v) else tuple(int(x) for x in v)  # type: ignore[arg-type]
    if not 1 <= len(t) <= 3 or any(x < 1 for x in t):
        raise CUDARuntimeError(f"bad {what} {v}: 1 to 3 dimensions, each >= 1")
    return (t + (1, 1))[:3]  # type: ignore[return-value]


class RawModule:
    """Kernels of one CUDA C source, built for the host (``options`` are NVRTC's and are not used)."""

    def __init__(self, code: str, options: Sequence[str] = (), name_expressions: Any = None) -> None:
        if name_expressions:
            raise CUDARuntimeError("emulated device: name_expressions are not supported (use extern \"C\")")
        path, self._sigs = build(code)
        self._lib = ctypes.CDLL(str(path))
        self._kernels: dict[str, RawKernel] = {}

    def get_function(self, name: str) -> RawKernel:
        """The kernel ``name``."""
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = RawKernel(self, name)
        return k


def synchronize() -> None:
    """Run all queued device work."""
    _device.flush()


__all__ = ["CUDARuntimeError", "Device", "Graph", "RawKernel", "RawModule", "Stream", "alloc_pinned_memory",
           "asarray", "ascontiguousarray", "build", "cuda", "empty", "empty_like", "matmul", "ndarray",
           "stats", "synchronize", "zeros", "zeros_like"]
