"""The emulated CUDA device itself: planted kernel bugs are caught, and CuPy's semantics hold.

Each planted bug is a small kernel compiled from a string (or a real kernel launched wrongly): a
removed barrier, divergent and half-exited barriers, an int32 for an int64 parameter, a 48-thread
block with shuffles, an out-of-bounds write. The stream tests pin down what makes the emulator
catch asynchrony bugs: queued work, late reads of pinned memory, graph capture rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.backends import cuda, cuda_emu
from edgerun.backends.cuda_emu import CUDARuntimeError

cp = cuda_emu

REDUCE = r"""
extern "C" __global__ void block_reduce(const float* x, float* out, int n) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = t < n ? x[t] : 0.0f;
    __syncthreads();  // BARRIER
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}
"""


def _reduce(code: str, x: np.ndarray) -> np.ndarray:
    k = cp.RawModule(code=code).get_function("block_reduce")
    xd, out = cp.asarray(x), cp.empty((1,), np.float32)
    k((1,), (256,), (xd, out, np.int32(x.size)))
    return out.get()


def test_reduction_with_barriers_is_exact() -> None:
    x = np.arange(200, dtype=np.float32)
    assert _reduce(REDUCE, x)[0] == x.sum()


def test_removed_barrier_is_caught() -> None:
    # without the barrier after the loads, thread 0 adds slots that higher threads have not written
    # yet (blocks run their threads in turn up to each sync point): the sum is wrong
    x = np.arange(200, dtype=np.float32)
    planted = REDUCE.replace("__syncthreads();  // BARRIER", "")
    assert _reduce(planted, x)[0] != x.sum()


def test_divergent_barrier_fails_loudly() -> None:
    code = r"""
    extern "C" __global__ void diverge(float* y) {
        if (threadIdx.x < 32) { __syncthreads(); y[threadIdx.x] = 1.0f; }
        else { __syncthreads(); y[threadIdx.x] = 2.0f; }
    }"""
    k = cp.RawModule(code=code).get_function("diverge")
    y = cp.empty((64,), np.float32)
    k((1,), (64,), (y,))
    with pytest.raises(CUDARuntimeError,
                       match=r"kernel diverge, block \(0,0,0\).*different barriers.*threads 0-31"):
        cp.synchronize()


def test_barrier_after_early_exit_fails_loudly() -> None:
    code = r"""
    extern "C" __global__ void early(float* y, int n) {
        if (threadIdx.x >= n) return;
        __syncthreads();
        y[threadIdx.x] = 1.0f;
    }"""
    k = cp.RawModule(code=code).get_function("early")
    y = cp.empty((64,), np.float32)
    k((2,), (64,), (y, np.int32(40)))
    with pytest.raises(CUDARuntimeError, match=r"threads 0-39 wait while threads 40-63 have exited"):
        cp.synchronize()


@pytest.fixture(scope="module")
def kernels() -> cuda.CudaBackend:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGERUN_CUDA", "emulate")
    be = cuda.CudaBackend()
    yield be
    mp.undo()


def test_int32_for_int64_parameter_is_refused(kernels: cuda.CudaBackend) -> None:
    w = cp.zeros((4, 18), np.uint8)
    x, y = cp.zeros((1, 32), np.float32), cp.empty((1, 4), np.float32)
    k = kernels.kernel("mul_mat_q4_0")
    with pytest.raises(CUDARuntimeError, match=r"argument 6 for parameter 'i64 row_bytes' is int32"):
        k((1, 1), (128,), (w, x, y, np.int32(4), np.int32(32), np.int32(1), np.int32(18)))
    with pytest.raises(CUDARuntimeError, match=r"Python int"):
        k((1, 1), (128,), (w, x, y, 4, np.int32(32), np.int32(1), np.int64(18)))
    with pytest.raises(CUDARuntimeError, match=r"'float\* X' is a int32 array"):
        k((1, 1), (128,), (w, cp.zeros((1, 32), np.int32), y, np.int32(4), np.int32(32), np.int32(1),
                           np.int64(18)))
    k((1, 1), (128,), (w, x, y, np.int32(4), np.int32(32), np.int32(1), np.int64(18)))
    np.testing.assert_array_equal(y.get(), 0.0)


def test_48_thread_block_with_shuffles_is_caught(kernels: cuda.CudaBackend) -> None:
    x = cp.asarray(np.ones((2, 64), np.float32))
    y = cp.empty((2, 64), np.float32)
    kernels.kernel("rms_norm_f32")((2,), (48,), (x, None, y, np.int32(2), np.int32(64), np.float32(1e-6)))
    with pytest.raises(CUDARuntimeError,
                       match=r"rms_norm_f32.*48 threads.*__shfl_xor_sync.*warp 1, which has only 16 lanes"):
        cp.synchronize()


def test_shuffle_with_exited_lanes_is_caught() -> None:
    code = r"""
    extern "C" __global__ void sh(float* y) {
        if (threadIdx.x % 32 >= 20) return;
        y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    }"""
    k = cp.RawModule(code=code).get_function("sh")
    y = cp.empty((32,), np.float32)
    k((1,), (32,), (y,))
    with pytest.raises(CUDARuntimeError, match=r"lane 20 \(thread 20\) has exited"):
        cp.synchronize()


def test_out_of_bounds_write_hits_the_guard_zone() -> None:
    code = r"""
    extern "C" __global__ void fill(float* y, int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i <= n) y[i] = 1.0f;  // off by one
    }"""
    k = cp.RawModule(code=code).get_function("fill")
    y = cp.empty((100,), np.float32)
    k((1,), (128,), (y, np.int32(100)))
    with pytest.raises(CUDARuntimeError,
                       match=r"kernel fill.*out-of-bounds write.*4 byte\(s\) after the end"):
        cp.synchronize()


def test_fresh_allocations_are_poisoned() -> None:
    assert np.isnan(cp.empty((7,), np.float32).get()).all()
    assert (cp.empty((7,), np.int32).get() == -1).all()
    assert (cp.zeros((7,), np.int32).get() == 0).all()


def test_implicit_host_conversion_raises() -> None:
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(cp.zeros((3,)))


def test_stream_queues_until_synchronize() -> None:
    s = cp.cuda.Stream(non_blocking=True)
    src = cp.alloc_pinned_memory(16)
    host = np.frombuffer(src, np.float32, 4)
    host[:] = [1, 2, 3, 4]
    d = cp.empty((4,), np.float32)
    cp.cuda.runtime.memcpyAsync(d.data.ptr, host.ctypes.data, 16, 1, s.ptr)
    host[:] = [5, 6, 7, 8]  # a pinned source is read when the copy runs, not when it is queued
    back = np.frombuffer(cp.alloc_pinned_memory(16), np.float32, 4)
    back[:] = 0
    cp.cuda.runtime.memcpyAsync(back.ctypes.data, d.data.ptr, 16, 2, s.ptr)
    assert (back == 0).all(), "a queued copy must not have run before synchronize"
    s.synchronize()
    np.testing.assert_array_equal(back, [5, 6, 7, 8])
    with pytest.raises(CUDARuntimeError, match="overruns"):
        cp.cuda.runtime.memcpyAsync(d.data.ptr, host.ctypes.data, 32, 1, s.ptr)


def test_graph_capture_records_and_replays(kernels: cuda.CudaBackend) -> None:
    s = cp.cuda.Stream(non_blocking=True)
    x = cp.asarray(np.ones(8, np.float32))
    k = kernels.kernel("scale_f32")
    s.begin_capture()
    with s:
        k((1,), (32,), (x, np.float32(2.0), np.int64(8)))
    with pytest.raises(CUDARuntimeError, match="capturing"):
        cp.empty((4,), np.float32)
    with pytest.raises(CUDARuntimeError, match="capturing"):
        s.synchronize()
    g = s.end_capture()
    s.synchronize()
    np.testing.assert_array_equal(x.get(), 1.0)  # captured, not run
    g.launch(stream=s)
    g.launch(stream=s)
    s.synchronize()
    np.testing.assert_array_equal(x.get(), 4.0)


def test_missing_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(cuda_emu.shutil, "which", lambda name: None)
    with pytest.raises(CUDARuntimeError, match="needs a host C\\+\\+ compiler"):
        cuda_emu.compiler()
