"""The CUDA sources compile with nvcc for sm_80/89/90 and with NVRTC (as CuPy compiles them at run time)."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "native" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_89", "sm_90")
NVCC = shutil.which("nvcc")


def test_sources_exist() -> None:
    names = {p.stem for p in SOURCES}
    assert {"matmul", "norm", "rope", "kv", "attention"} <= names
    assert (CUDA_DIR / "common.cuh").is_file()
    for p in SOURCES:
        text = p.read_text()
        assert "#include <" not in text, f"{p.name}: NVRTC has no standard headers"
        assert "__host__" not in text and "int main" not in text


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(src: Path, arch: str, tmp_path: Path) -> None:
    r = subprocess.run([NVCC, f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings", "-c", str(src),
                        "-o", str(tmp_path / "k.o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def test_kernel_names_match_backend() -> None:
    from edgerun.backends import cuda

    text = "".join(p.read_text() for p in SOURCES)
    for name in cuda.KERNEL_NAMES:
        assert f"void {name}(" in text, name
    for tname in cuda.TYPE_SUFFIX.values():
        assert f"DEFINE_TYPE({tname}," in text


# ----------------------------------------------------------------------------- NVRTC


def _find_nvrtc() -> str | None:
    env = os.environ.get("EDGERUN_NVRTC")
    if env:
        return env
    lib = ctypes.util.find_library("nvrtc")
    if lib:
        return lib
    cands = glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*")
    try:
        import nvidia  # the pip wheels nvidia-cuda-nvrtc-*

        for d in nvidia.__path__:
            cands += glob.glob(os.path.join(d, "*", "lib", "libnvrtc.so*"))
    except ImportError:
        pass
    cands = [c for c in cands if "builtins" not in c]
    return cands[0] if cands else None


def nvrtc_compile(lib: ctypes.CDLL, code: str, name: str, arch: str) -> tuple[int, str]:
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None)
    assert rc == 0
    opts = [f"--gpu-architecture=compute_{arch[3:]}".encode(), b"-std=c++17"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, buf.value.decode(errors="replace")


NVRTC = _find_nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (set EDGERUN_NVRTC)")
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_nvrtc_compiles(src: Path) -> None:
    from edgerun.backends.cuda import kernel_source

    lib = ctypes.CDLL(NVRTC)
    code = kernel_source(src.stem)
    assert '#include "common.cuh"' not in code
    for arch in ARCHS:
        rc, log = nvrtc_compile(lib, code, src.name, arch)
        assert rc == 0, log[-4000:]


# ------------------------------------------------- the dequantize table, run on the host with g++
# common.cuh's deq16 functions are plain per-thread code: compiled for the host with the emulated
# device's header (CUDA qualifiers as no-ops, h2f's host fallback instead of its PTX line), they
# are checked bit-exactly against the numpy reference dequantizers of every type in the traits table.

_HARNESS = r"""
#include <cstdio>
#include <cstdlib>
#include "common.cuh"

template <int QT> static void run(const unsigned char* in, float* out, long nblocks) {
    typedef QTraits<QT> T;
    const long ngroups = nblocks * T::NG;
    for (long gi = 0; gi < ngroups; gi++) deq_group<QT>(in, (int)gi, out + 16 * gi);
}

int main(int argc, char** argv) {
    int qt = atoi(argv[1]);
    long nbytes = atol(argv[2]);
    FILE* f = fopen(argv[3], "rb");
    unsigned char* in = (unsigned char*)malloc(nbytes);
    if (fread(in, 1, nbytes, f) != (size_t)nbytes) return 3;
    fclose(f);
    float* out = (float*)malloc(nbytes * 16);
    long n = 0;
    switch (qt) {
#define CASE(Q) case Q: n = nbytes / QTraits<Q>::TS * QTraits<Q>::BS; \
                        run<Q>(in, out, nbytes / QTraits<Q>::TS); break;
        CASE(QT_F32) CASE(QT_F16) CASE(QT_BF16) CASE(QT_Q4_0) CASE(QT_Q4_1) CASE(QT_Q5_0) CASE(QT_Q5_1)
        CASE(QT_Q8_0) CASE(QT_Q4_K) CASE(QT_Q5_K) CASE(QT_Q6_K)
        default: return 2;
    }
    f = fopen(argv[4], "wb");
    fwrite(out, 4, n, f);
    fclose(f);
    return 0;
}
"""

CXX = shutil.which("g++") or shutil.which("c++")


@pytest.fixture(scope="module")
def host_deq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if CXX is None:
        pytest.skip("no host C++ compiler")
    d = tmp_path_factory.mktemp("deq")
    (d / "h.cpp").write_text(_HARNESS)
    exe = d / "deq"
    emu = CUDA_DIR / "emu" / "cuda_emu.h"
    r = subprocess.run([CXX, "-O1", "-w", "-std=c++17", "-include", str(emu), "-I", str(CUDA_DIR),
                        str(d / "h.cpp"), "-o", str(exe)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


@pytest.mark.parametrize("qtype", [0, 1, 30, 2, 3, 6, 7, 8, 12, 13, 14])
def test_dequant_table_matches_reference(host_deq: Path, qtype: int, tmp_path: Path) -> None:
    import numpy as np

    from edgerun.quant.traits import TRAITS, dequantize, quantize

    rng = np.random.default_rng(qtype)
    k = 512
    x = rng.standard_normal((4, k)).astype(np.float32)
    t = TRAITS[qtype]
    if t.name in ("F32", "F16", "BF16"):
        raw = quantize(x, qtype) if t.name == "F32" else (
            x.astype(np.float16).view(np.uint8) if t.name == "F16"
            else (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8))
    else:
        raw = quantize(x, qtype)
        # also random bytes everywhere (all bit patterns), with finite scales
        rnd = rng.integers(0, 256, size=raw.shape, dtype=np.uint8)
        blocks = rnd.reshape(-1).view(t.dtype)
        for f in ("d", "dmin", "m"):
            if f in t.dtype.names:
                blocks[f] = rng.uniform(-1, 1, blocks.shape).astype(np.float16)
        raw = np.concatenate([np.ascontiguousarray(raw).view(np.uint8), rnd])
    raw = np.ascontiguousarray(raw).view(np.uint8)
    ref = dequantize(raw, qtype, k) if t.name != "F32" else x
    (tmp_path / "in.bin").write_bytes(raw.tobytes())
    r = subprocess.run([str(host_deq), str(qtype), str(raw.nbytes), str(tmp_path / "in.bin"),
                        str(tmp_path / "out.bin")], capture_output=True, timeout=60)
    assert r.returncode == 0
    got = np.fromfile(tmp_path / "out.bin", np.float32).reshape(ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
