"""Builds of the native C library other than the default one, its headers, and its status codes.

- The portable build (-DER_NO_X86: what an ARM or other non-x86 compiler sees) compiles, links and
  computes the same bits as the full library's scalar path.
- The build with -DER_FUSED_MAX_B=8 (fewer rows on the small-batch kernels) compiles and agrees
  with the default build within the activation rounding.
- Every internal header compiles alone and defines no symbol: none is a code fragment that needs
  statics from the file including it.
- Entry points that can fail return the er_status codes of include/edgerun.h.
- The C side's block sizes and kernel-table rows are gguf's (the ids themselves: test_type_ids.py).
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edgerun.quant.traits import TRAITS

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"
SOURCES = sorted(p for p in [*NATIVE.glob("*.c"), *NATIVE.glob("arch/*/*.c")] if p.name != "module.c")

ER_E_UNSUPPORTED, ER_E_NOMEM, ER_E_SHAPE, ER_E_INVALID = -1, -2, -3, -4
Q4_0, Q8_0, Q4_K = 2, 8, 12


def _cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def _build(tmp_path: Path, name: str, opt: str, *flags: str) -> ctypes.CDLL:
    """The library from every source with these extra flags, as a loaded shared object. Bit-for-bit
    comparisons with the installed build need its -O3 where FMA exists (-O1 forms no FMAs)."""
    out = tmp_path / f"{name}.so"
    r = subprocess.run(
        [
            _cc(),
            opt,
            "-std=gnu11",
            "-pthread",
            "-fPIC",
            "-shared",
            "-fvisibility=hidden",
            "-Wall",
            "-Werror=implicit-function-declaration",
            f"-I{NATIVE}",
            *flags,
            *map(str, SOURCES),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return _declare(ctypes.CDLL(str(out)))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.er_matmul.argtypes = [i32, vp, i64, i32, i32, vp, i32, vp]
    lib.er_get_rows.argtypes = [i32, vp, i64, i32, vp, i32, vp]
    lib.er_tiles_add.argtypes = [vp, i32, i32, i32, i64, vp]
    lib.er_tiles_remove.argtypes = [vp]
    lib.er_status_str.restype = ctypes.c_char_p
    lib.er_set_isa.argtypes = [i32]
    return lib


def _installed() -> ctypes.CDLL:
    spec = importlib.util.find_spec("edgerun._native")
    if spec is None or spec.origin is None:
        pytest.skip("native library not built")
    return _declare(ctypes.CDLL(spec.origin))


def _weight(qt: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks with sane half-precision scales (n rows of k values)."""
    bs, nbytes = {Q4_0: (32, 18), Q8_0: (32, 34), Q4_K: (256, 144)}[qt]
    w = rng.integers(0, 256, (n, k // bs, nbytes), dtype=np.uint8)
    scale = rng.uniform(0.001, 0.02, (n, k // bs)).astype(np.float16).view(np.uint8).reshape(n, k // bs, 2)
    w[:, :, 0:2] = scale
    if qt == Q4_K:  # dmin as well
        w[:, :, 2:4] = (
            rng.uniform(0.001, 0.02, (n, k // bs)).astype(np.float16).view(np.uint8).reshape(n, k // bs, 2)
        )
    return np.ascontiguousarray(w.reshape(n, -1))


def _matmul(lib: ctypes.CDLL, qt: int, w: np.ndarray, x: np.ndarray) -> tuple[int, np.ndarray]:
    y = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    rc = lib.er_matmul(
        qt, w.ctypes.data, w.shape[1], w.shape[0], x.shape[1], x.ctypes.data, x.shape[0], y.ctypes.data
    )
    return rc, y


def test_portable_build_runs_like_the_scalar_path(tmp_path: Path) -> None:
    """No x86 code at all: the scalar table only, and its products are the full library's scalar ones.

    Run in a fresh process: earlier tests in this one change the installed library's tuning switches
    (threads, fused kernels, tiles), which the freshly built portable library does not share."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from tests.test_native_build import _portable_vs_scalar; _portable_vs_scalar(Path(sys.argv[2]))")
    r = subprocess.run([sys.executable, "-c", code, str(root), str(tmp_path)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


def _portable_vs_scalar(tmp_path: Path) -> None:
    portable = _build(tmp_path, "portable", "-O1", "-DER_NO_X86")
    assert portable.er_isa() == 0 and portable.er_isa_max() == 0
    full = _installed()
    rng = np.random.default_rng(11)
    old = full.er_isa()  # er_set_isa returns the level it set, not the previous one
    full.er_set_isa(0)
    try:
        for qt, k in ((Q4_0, 96), (Q8_0, 256), (Q4_K, 512)):
            w = _weight(qt, 37, k, rng)
            for b in (1, 3, 9, 20):
                x = rng.standard_normal((b, k)).astype(np.float32)
                rc_p, y_p = _matmul(portable, qt, w, x)
                rc_f, y_f = _matmul(full, qt, w, x)
                assert rc_p == rc_f == 0
                assert y_p.tobytes() == y_f.tobytes(), f"qt={qt} B={b}"
    finally:
        full.er_set_isa(old)


@pytest.mark.slow  # a full -O3 build: minutes on a busy 2-core machine
def test_build_with_fused_max_b_8(tmp_path: Path) -> None:
    """-DER_FUSED_MAX_B=8 builds (it once failed on ER_V512_NR) and computes the same products as the
    default build up to the activation rounding of the other kernel family for 9..16 rows."""
    small = _build(tmp_path, "fused8", "-O3", "-DER_FUSED_MAX_B=8")
    full = _installed()
    rng = np.random.default_rng(12)
    for qt, k in ((Q4_0, 256), (Q4_K, 512)):
        w = _weight(qt, 48, k, rng)
        for b in (1, 8, 9, 16):
            x = rng.standard_normal((b, k)).astype(np.float32)
            rc_s, y_s = _matmul(small, qt, w, x)
            rc_f, y_f = _matmul(full, qt, w, x)
            assert rc_s == rc_f == 0
            np.testing.assert_allclose(
                y_s, y_f, rtol=0, atol=2e-2 * np.abs(y_f).max(), err_msg=f"qt={qt} B={b}"
            )
            if b <= 8:  # the same kernels on both sides
                assert y_s.tobytes() == y_f.tobytes(), f"qt={qt} B={b}"


@pytest.mark.parametrize(
    ("header", "flags"),
    [
        pytest.param("blocks.h", [], id="blocks.h"),
        pytest.param("include/edgerun.h", [], id="edgerun.h"),
        pytest.param("common.h", [], id="common.h"),
        pytest.param("attention.h", [], id="attention.h"),
        pytest.param("repack.h", [], id="repack.h"),
        pytest.param("arch/x86/x86.h", ["-mavx2", "-mfma", "-mf16c"], id="x86.h"),
        pytest.param(
            "arch/x86/tile_dot.h", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"], id="tile_dot.h"
        ),
    ],
)
def test_header_is_self_contained(tmp_path: Path, header: str, flags: list[str]) -> None:
    """A header compiles on its own (twice, for its include guard) and its object defines nothing."""
    if (
        header.startswith("arch/x86/")
        and subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() != "x86_64"
    ):
        pytest.skip("x86 header")
    src = tmp_path / "h.c"
    src.write_text(f'#include "{header}"\n#include "{header}"\n')
    obj = tmp_path / "h.o"
    r = subprocess.run(
        [_cc(), "-std=gnu11", "-Wall", "-Werror", f"-I{NATIVE}", *flags, "-c", str(src), "-o", str(obj)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    nm = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True)
    assert nm.returncode == 0
    assert nm.stdout.strip() == "", f"{header} defines symbols:\n{nm.stdout}"


def test_status_codes() -> None:
    """Each failure maps to its er_status, and er_status_str names it."""
    lib = _installed()
    assert lib.er_abi_version() == 1
    names = {code: lib.er_status_str(code).decode() for code in (0, -1, -2, -3, -4, -99)}
    assert names[0] == "ok" and "unsupported" in names[-1] and "memory" in names[-2]
    assert "block" in names[-3] and "invalid" in names[-4] and "unknown" in names[-99]
    w = np.zeros((4, 18), np.uint8)
    x = np.zeros((1, 32), np.float32)
    y = np.zeros((1, 4), np.float32)
    assert lib.er_matmul(99, w.ctypes.data, 18, 4, 32, x.ctypes.data, 1, y.ctypes.data) == ER_E_UNSUPPORTED
    assert lib.er_matmul(Q4_0, w.ctypes.data, 18, 4, 48, x.ctypes.data, 1, y.ctypes.data) == ER_E_SHAPE
    assert lib.er_matmul(Q4_0, w.ctypes.data, 18, -4, 32, x.ctypes.data, 1, y.ctypes.data) == ER_E_INVALID
    assert lib.er_matmul(Q4_0, None, 18, 4, 32, x.ctypes.data, 1, y.ctypes.data) == ER_E_INVALID
    assert lib.er_matmul(Q4_0, w.ctypes.data, 18, 4, 32, x.ctypes.data, 1, y.ctypes.data) == 0
    ids = np.zeros(1, np.int64)
    assert lib.er_get_rows(99, w.ctypes.data, 18, 32, ids.ctypes.data, 1, y.ctypes.data) == ER_E_UNSUPPORTED
    assert lib.er_get_rows(Q4_0, w.ctypes.data, 18, 40, ids.ctypes.data, 1, y.ctypes.data) == ER_E_SHAPE
    assert lib.er_tiles_add(None, Q4_0, 16, 64, 36, None) == ER_E_INVALID
    assert (
        lib.er_tiles_add(w.ctypes.data, 3, 16, 64, 40, w.ctypes.data) == ER_E_UNSUPPORTED
    )  # Q4_1: no layout
    assert lib.er_tiles_remove(w.ctypes.data) == ER_E_INVALID  # never registered


def test_c_block_sizes_match_gguf() -> None:
    """blocks.h's static_assert'ed block sizes and dispatch.c's values per block are gguf's."""
    blocks = (NATIVE / "blocks.h").read_text()
    sizes = {name.upper(): int(n) for name, n in re.findall(r"sizeof\(block_(\w+)\)\s*==\s*(\d+)", blocks)}
    assert sizes
    for name, nbytes in sizes.items():
        qt = GGMLQuantizationType[name]
        assert GGML_QUANT_SIZES[qt][1] == nbytes, name
        assert TRAITS[qt].type_size == nbytes, name
    consts = {"ER_QK": 32, "ER_QKK": 256, "1": 1}
    for m in re.finditer(r"#define (ER_QKK?) (\d+)", blocks):
        assert consts[m.group(1)] == int(m.group(2))
    table = (NATIVE / "dispatch.c").read_text()
    rows = re.findall(r"\{\.id = ER_(\w+), \.block = (\w+)", table)
    assert {GGMLQuantizationType[n].value for n, _ in rows} == {int(q) for q in TRAITS}
    for name, block in rows:
        qt = GGMLQuantizationType[name]
        assert consts[block] == GGML_QUANT_SIZES[qt][0] == TRAITS[qt].block_size, name


def test_library_supports_exactly_the_traits_types() -> None:
    """The built library's er_supports agrees with the traits table (and refuses other ids)."""
    lib = _installed()
    known = {int(q) for q in TRAITS}
    for qt in range(-1, 45):
        assert bool(lib.er_supports(qt)) == (qt in known), qt
