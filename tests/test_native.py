"""Native C kernels vs numpy references (gguf.quants.dequantize) for every supported type."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from edgerun.backends import native as nv
from edgerun.backends.base import QTensor
from edgerun.quant.traits import TRAITS

pytestmark = pytest.mark.skipif(not nv.available(), reason=f"native kernels not built ({nv.load_error()})")

QUANT = [2, 3, 6, 7, 8, 12, 13, 14]  # Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K
FLOAT = [0, 1, 30]  # F32 F16 BF16
ISAS = [
    i
    for i in ("scalar", "avx2", "avx512-vnni")
    if nv.available() and nv.ISA_NAMES.index(i) <= nv.ISA_NAMES.index(nv.isa_max())
]
if "avx512-vnni" in ISAS:
    ISAS.append("avx512-vnni-unfused")
_MINS = (3, 7, 12, 13)  # types with a second f16 (m / dmin) after d


def make_weight(qt: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid weight in block layout: random bytes with sane f16 scale fields."""
    if qt == 0:
        return rng.standard_normal((n, k)).astype(np.float32)
    if qt == 1:
        return rng.standard_normal((n, k)).astype(np.float16).view(np.uint8)
    if qt == 30:
        f = rng.standard_normal((n, k)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    bs, ts = TRAITS[qt].block_size, TRAITS[qt].type_size
    nb = k // bs
    raw = rng.integers(0, 256, (n, nb, ts), dtype=np.uint8)

    def f16(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, (n, nb)).astype(np.float16).view(np.uint8).reshape(n, nb, 2)

    if qt == 14:
        raw[:, :, 208:210] = f16(0.001, 0.01)
    else:
        raw[:, :, 0:2] = f16(0.001, 0.02)
        if qt in _MINS:
            raw[:, :, 2:4] = f16(-0.02, 0.02) if qt in (3, 7) else f16(0.0, 0.02)
    return raw.reshape(n, nb * ts)


def ref_weight(qt: int, w: np.ndarray, k: int) -> np.ndarray:
    if qt == 0:
        return w
    return dequantize(w, GGMLQuantizationType(qt)).reshape(w.shape[0], k).astype(np.float32)


def quant_act(x: np.ndarray, group: int = 32) -> np.ndarray:
    """The kernels' activation quantization (int8 per group, round half away from zero), dequantized.

    Legacy types and the unfused path use groups of 32; the fused AVX-512 K-quant kernels use 256 (Q8_K).
    """
    b, k = x.shape
    xb = x.reshape(b, k // group, group).astype(np.float32)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    v = xb * inv
    q = np.trunc(v + np.where(v >= 0, np.float32(0.5), np.float32(-0.5)))
    return (q * d).reshape(b, k).astype(np.float32)


def _use_isa(isa: str) -> None:
    nv.set_fused(not isa.endswith("-unfused"))
    nv.set_isa(isa.removesuffix("-unfused"))


@pytest.fixture(autouse=True)
def _restore():
    yield
    nv.set_pool(True)
    nv.set_fused(True)
    nv.set_isa(None)
    nv.set_threads(2)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qt", QUANT + FLOAT)
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul(qt: int, isa: str, threads: int) -> None:
    _use_isa(isa)
    nv.set_threads(threads)
    rng = np.random.default_rng(qt * 7 + threads)
    bs = TRAITS[qt].block_size
    ks = [256, 512, 768] if bs == 256 else [32, 96, 160, 512]
    if bs == 1:
        ks += [7, 45]
    for k in ks:
        for n in (1, 7, 33, 48):  # 33, 48: whole 16-row tiles and a remainder (the 16-row tile kernels)
            w = make_weight(qt, n, k, rng)
            wf = ref_weight(qt, w, k).astype(np.float64)
            for b in (1, 2, 5, 8):
                x = rng.standard_normal((b, k)).astype(np.float32)
                y = nv.matmul(qt, w, x)
                assert y.shape == (b, n) and y.dtype == np.float32
                scale = np.sqrt(np.mean(x.astype(np.float64) ** 2) * np.mean(wf**2) * k) + 1e-30
                exact = x.astype(np.float64) @ wf.T
                # vs the f32 reference: 8-bit activations cost < ~1% of the output scale
                assert np.sqrt(np.mean((y - exact) ** 2)) / scale < 2e-2, (qt, isa, n, k, b)
                # vs a reference with the same activation quantization: only rounding differences
                group = 256 if qt in (12, 13, 14) else 32  # K-quants: one activation scale per 256
                ref = exact if qt in FLOAT else quant_act(x, group).astype(np.float64) @ wf.T
                assert np.abs(y - ref).max() / scale < 2e-5, (qt, isa, n, k, b)


@pytest.mark.parametrize("qt", QUANT)
def test_matmul_prefill_batches(qt: int) -> None:
    """B > 16 takes the batched GEMM path (AVX-512 VNNI) or the decoded-row path, 9..16 the fused
    kernels in passes of 8 rows (16-row tiles for Q4_0/Q5_0/Q8_0); odd B and N."""
    nv.set_threads(2)
    rng = np.random.default_rng(100 + qt)
    bs = TRAITS[qt].block_size
    for k in [256, 768] if bs == 256 else [96, 512]:
        for n in (1, 7, 33):
            w = make_weight(qt, n, k, rng)
            wf = ref_weight(qt, w, k).astype(np.float64)
            for b in (9, 20, 37, 70):
                x = rng.standard_normal((b, k)).astype(np.float32)
                y = nv.matmul(qt, w, x)
                scale = np.sqrt(np.mean(x.astype(np.float64) ** 2) * np.mean(wf**2) * k)
                group = 256 if qt in (12, 13, 14) else 32  # on every path, for batch invariance
                ref = quant_act(x, group).astype(np.float64) @ wf.T
                assert np.abs(y - ref).max() / scale < 2e-5, (qt, n, k, b)
                # the GEMM's tiling (how many activation rows share one decode of a weight row) does
                # not change a single bit (70 rows: one tile, or two of the smallest, 64 rows)
                old = nv.set_gemm_tile_bytes(0)
                try:
                    np.testing.assert_array_equal(nv.matmul(qt, w, x), y)
                finally:
                    nv.set_gemm_tile_bytes(old)


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("qt", QUANT + FLOAT)
def test_threads_agree(qt: int, pool: bool) -> None:
    """Shapes big enough for the multi-threaded paths give the same numbers as one thread."""
    nv.set_pool(pool)
    rng = np.random.default_rng(200 + qt)
    n, k = 263, 2048
    w = make_weight(qt, n, k, rng)
    for b in (1, 3, 12):
        x = rng.standard_normal((b, k)).astype(np.float32)
        nv.set_threads(1)
        y1 = nv.matmul(qt, w, x)
        nv.set_threads(2)
        y2 = nv.matmul(qt, w, x)
        np.testing.assert_array_equal(y1, y2)
    ids = rng.integers(0, n, 300)
    np.testing.assert_array_equal(nv.get_rows(qt, w, ids, k), ref_weight(qt, w, k)[ids])


def test_pool_stress_concurrent_callers() -> None:
    """Many small-batch calls from two Python threads at once (one gets the pool, the other runs inline)."""
    import threading

    rng = np.random.default_rng(7)
    w = make_weight(2, 300, 2048, rng)
    xs = [rng.standard_normal((b, 2048)).astype(np.float32) for b in (1, 2, 5)]
    nv.set_threads(1)
    refs = [nv.matmul(2, w, x) for x in xs]
    nv.set_threads(2)
    errors: list[str] = []

    def run() -> None:
        for i in range(150):
            j = i % 3
            if not np.array_equal(nv.matmul(2, w, xs[j]), refs[j]):
                errors.append(f"mismatch at {i}")

    ts = [threading.Thread(target=run) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in ts)


def test_matvec_1d_and_large_batch() -> None:
    rng = np.random.default_rng(1)
    k, n = 512, 40
    for qt in (2, 12, 14, 1):
        w = make_weight(qt, n, k, rng)
        wf = ref_weight(qt, w, k)
        x = rng.standard_normal((70, k)).astype(np.float32)  # > one batch tile
        y = nv.matmul(qt, w, x)
        group = 256 if qt in (12, 14) else 32
        ref = (x if qt in FLOAT else quant_act(x, group)).astype(np.float64) @ wf.T.astype(np.float64)
        assert np.abs(y - ref).max() < 1e-3 * np.abs(ref).max()
        # batch invariance: one row alone (the B = 1 kernels) equals that row of the big batch
        # (the GEMM path) up to float summation order, since both quantize activations alike
        y1 = nv.matmul(qt, w, x[3])
        assert y1.shape == (n,)
        assert np.abs(y1 - y[3]).max() <= 1e-5 * np.abs(y[3]).max()
        y5 = nv.matmul(qt, w, x[:5])  # a small batch (fused or tile kernels)
        assert np.abs(y5 - y[:5]).max() <= 1e-5 * np.abs(y[:5]).max()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qt", QUANT + FLOAT)
def test_get_rows(qt: int, isa: str) -> None:
    _use_isa(isa)
    rng = np.random.default_rng(qt)
    k = 512 if TRAITS[qt].block_size > 1 else 72
    w = make_weight(qt, 9, k, rng)
    ids = np.array([8, 0, 3, 3])
    got = nv.get_rows(qt, w, ids, k)
    np.testing.assert_allclose(got, ref_weight(qt, w, k)[ids], rtol=1e-6, atol=1e-7)
    be = nv.NativeBackend()
    qtn = QTensor("t", qt, k, 9, w)
    np.testing.assert_array_equal(be.get_rows(qtn, ids), got)
    assert be.supports("matmul", qt) and be.name == "native"


def test_light_ops() -> None:
    rng = np.random.default_rng(5)
    nv.set_threads(2)
    x = rng.standard_normal((300, 896)).astype(np.float32)
    w = rng.standard_normal(896).astype(np.float32)
    ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(nv.rms_norm(x, w, 1e-6), ref, rtol=1e-4, atol=1e-5)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(nv.softmax(x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    g, u = x[:, :448], x[:, 448:]
    np.testing.assert_allclose(nv.silu_gate(g, u), g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)
    gl = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    np.testing.assert_allclose(nv.gelu_gate(g, u), gl * u, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(nv.add(g, u), g + u)
    # rope, both styles, partial rotation
    t, h, d = 5, 3, 64
    q = rng.standard_normal((t, h, d)).astype(np.float32)
    pos = np.array([0, 1, 7, 100, 4095])
    for neox in (False, True):
        for n_rot in (64, 32):
            got = nv.rope(q, pos, 10000.0, neox, n_rot)
            half = n_rot // 2
            ang = pos[:, None] * 10000.0 ** (-2.0 * np.arange(half) / n_rot)
            c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
            i0 = np.arange(half) if neox else 2 * np.arange(half)
            i1 = i0 + half if neox else i0 + 1
            ref = q.astype(np.float64).copy()
            a, b = ref[..., i0].copy(), ref[..., i1].copy()
            ref[..., i0] = a * c - b * s
            ref[..., i1] = a * s + b * c
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("b", [1, 3])
def test_ffn(b: int) -> None:
    rng = np.random.default_rng(9)
    d, f = 256, 512
    x = rng.standard_normal((b, d)).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, d).astype(np.float32)
    gate = QTensor("g", 12, d, f, make_weight(12, f, d, rng))
    up = QTensor("u", 2, d, f, make_weight(2, f, d, rng))
    down = QTensor("d", 14, f, d, make_weight(14, d, f, rng))
    for act in ("silu", "gelu_tanh"):
        got = nv.ffn(x, nw, 1e-6, gate, up, down, act)
        n = nv.rms_norm(x, nw, 1e-6)
        gg = n @ ref_weight(12, gate.data, d).T
        uu = n @ ref_weight(2, up.data, d).T
        hh = nv.silu_gate(gg, uu) if act == "silu" else nv.gelu_gate(gg, uu)  # gelu_tanh
        ref = x + hh @ ref_weight(14, down.data, f).T
        err = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean((ref - x) ** 2))
        assert err < 5e-2  # two layers of 8-bit activations
        # the same chain of native ops gives the same numbers
        gate_fn = nv.silu_gate if act == "silu" else nv.gelu_gate
        chain = x + nv.matmul(14, down.data, gate_fn(nv.matmul(12, gate.data, n), nv.matmul(2, up.data, n)))
        np.testing.assert_allclose(got, chain, rtol=1e-4, atol=1e-4 * np.abs(chain).max())


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        nv.matmul(2, np.zeros((4, 18), np.uint8), np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError):
        nv.matmul(99, np.zeros((4, 18), np.uint8), np.zeros((1, 32), np.float32))


def test_forced_fallback() -> None:
    """EDGERUN_NO_NATIVE=1: available() is False, the registry answers with the Numba backend after
    one warning naming the reason, and a direct native call says why it cannot run."""
    code = (
        "import numpy as np\n"
        "from edgerun.backends import native as nv\n"
        "from edgerun.backends.registry import make_backend\n"
        "from edgerun.backends.base import QTensor\n"
        "assert not nv.available()\n"
        "w = np.zeros((3, 18), np.uint8); w[:, 2:] = 0x99\n"
        "w[:, 0:2] = np.array([0.5], np.float16).view(np.uint8)\n"
        "for _ in range(2):\n"
        "    be = make_backend('auto', 1)\n"
        "    assert be.name == 'numba', be.name\n"
        "    y = be.matmul(QTensor('w', 2, 32, 3, w), np.ones((2, 32), np.float32))\n"
        "    assert y.shape == (2, 3) and np.allclose(y, 16.0), y\n"
        "try:\n"
        "    nv.matmul(2, w, np.ones((2, 32), np.float32))\n"
        "except nv.NativeUnavailableError as e:\n"
        "    assert 'EDGERUN_NO_NATIVE' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('a native call ran without the library')\n"
        "print('fallback ok')\n"
    )
    env = dict(os.environ, EDGERUN_NO_NATIVE="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fallback ok" in r.stdout
    assert r.stderr.count("native kernels unavailable") == 1
    assert "EDGERUN_NO_NATIVE" in r.stderr


def test_portable_build_compiles(tmp_path) -> None:
    """The sources build without any x86 code (what an ARM or other non-x86 compiler sees)."""
    import shutil
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    native = Path(__file__).resolve().parents[1] / "native"
    for src in [*native.glob("*.c"), *native.glob("arch/*/*.c")]:  # the kernels span these files
        if src.name == "module.c":
            continue
        r = subprocess.run([cc, "-O1", "-std=gnu11", "-pthread", "-DER_NO_X86", "-Wall",
                            "-Werror=implicit-function-declaration", "-c", str(src), "-o",
                            str(tmp_path / "k.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name}: {r.stderr[-2000:]}"


@pytest.mark.parametrize("qt", [2, 6, 8])  # Q4_0, Q5_0, Q8_0
def test_tile_kernels_match_row_kernels(qt: int) -> None:
    """The 16-row tile kernels (small batches) and the row kernels give the same products."""
    rng = np.random.default_rng(300 + qt)
    k, n = 896, 50  # 3 whole tiles and 2 rows
    w = make_weight(qt, n, k, rng)
    for b in (2, 8, 11):
        x = rng.standard_normal((b, k)).astype(np.float32)
        old = nv.set_tile(False)
        try:
            rows = nv.matmul(qt, w, x)
        finally:
            nv.set_tile(old)
        tiled = nv.matmul(qt, w, x)
        np.testing.assert_allclose(tiled, rows, rtol=0, atol=1e-5 * np.abs(rows).max())


def test_f32_to_f16_rounds_like_numpy() -> None:
    """The KV cache's float -> half conversion equals numpy's astype(float16) bit for bit: every
    magnitude from subnormal to overflow, exact halfway cases (to even), signed zeros, inf and NaN."""
    if not nv.available():
        pytest.skip("native library not built")
    rng = np.random.default_rng(11)
    scales = (1e-9, 1e-6, 1e-4, 0.01, 1, 100, 1e4, 7e4)
    parts = [rng.standard_normal(20000).astype(np.float32) * s for s in scales]
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mid = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)  # exactly representable halfway points
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 65536, 2.98e-8, -1e-30],
                       np.float32)
    x = np.concatenate([*parts, mid, -mid, halves.astype(np.float32), special])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = nv.f32_to_f16(x)
    same = (got.view(np.uint16) == want.view(np.uint16)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} differ, first at {x[~same][:5]}"


@pytest.mark.parametrize("qt", [2, 6, 8])  # Q4_0, Q5_0, Q8_0
def test_multi_row_pass_kernels_match_row_kernels(qt: int) -> None:
    """B = 1 and 2: the kernels that take 2-4 weight rows per pass (sharing the activation loads)
    give the row-at-a-time kernels' products, for odd block counts (the one-block tail), row counts
    that leave 1-3 rows over, and either thread count; rows of 4096+ values keep the row kernels.
    Two rows are also checked against the 16-row tiles they replace."""
    if not nv.available():
        pytest.skip("native library not built")
    rng = np.random.default_rng(400 + qt)
    old_threads = nv.get_threads()
    try:
        for (k, n), b in itertools.product(((32, 5), (96, 3), (896, 50), (4064, 7), (4096, 6)), (1, 2)):
            w = make_weight(qt, n, k, rng)
            x = rng.standard_normal((2, k)).astype(np.float32)[:b]
            for threads in (1, 2):
                nv.set_threads(threads)
                want = None
                for nw in (0, 2, 3, 4):
                    old = nv.set_fw0(nw)
                    try:
                        got = nv.matmul(qt, w, x)
                    finally:
                        nv.set_fw0(old)
                    if want is None:
                        want = got
                        ref = x @ ref_weight(qt, w, k).T
                        np.testing.assert_allclose(want, ref, rtol=0, atol=0.02 * np.abs(ref).max())
                    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(),
                                               err_msg=f"K={k} N={n} threads={threads} rows/pass={nw}")
                if b == 2:
                    old = nv.set_fw0_b2(False)
                    try:
                        tiled = nv.matmul(qt, w, x)
                    finally:
                        nv.set_fw0_b2(old)
                    np.testing.assert_allclose(got, tiled, rtol=0, atol=1e-5 * np.abs(tiled).max())
    finally:
        nv.set_threads(old_threads)


@pytest.mark.parametrize("qt", [2, 6, 8, 12, 14])  # Q4_0, Q5_0, Q8_0, Q4_K, Q6_K
def test_batch_tiles_match_decoding_kernels(qt: int) -> None:
    """Batch tiles (the repacked copy of a weight): products equal the kernels that decode the rows (for the
    legacy types the 16-row tiles' bit for bit from 3 rows on; the K-quants' sum in another order), for
    row counts that leave a tail, 1-16 activation rows and either thread count, and the reference;
    the kernels really read the tiles (a scribbled copy changes the result); matrices the tiles do
    not take (odd block count, under 16 rows, other types) get none."""
    kq = qt in (12, 14)
    if not nv.available() or nv.tiles_size(qt, 16, 256) == 0:
        pytest.skip("no batch tiles on this CPU")
    rng = np.random.default_rng(500 + qt)
    assert nv.tiles_size(qt, 16, 96) == 0 and nv.tiles_size(qt, 15, 256) == 0
    assert nv.tiles_size(13, 64, 256) == 0 and nv.tiles_size(3, 64, 256) == 0  # Q5_K, Q4_1
    old_threads, old_min = nv.get_threads(), nv.set_tiles_min_b(1)
    try:
        for k, n in ((256, 16), (512, 40), (1536, 304)) if kq else ((64, 16), (640, 40), (896, 304)):
            w = make_weight(qt, n, k, rng)
            out = np.empty(nv.tiles_size(qt, n, k), np.uint8)
            before = nv.tiles_count()
            assert nv.add_tiles(qt, w, k, out) == out.nbytes
            assert nv.add_tiles(qt, w, k) == 0  # registered once only
            assert nv.tiles_count() == before + 1
            for b, threads in itertools.product((1, 2, 3, 8, 11, 16), (1, 2)):
                nv.set_threads(threads)
                x = rng.standard_normal((b, k)).astype(np.float32)
                nv.set_tiles(False)
                want = nv.matmul(qt, w, x)
                nv.set_tiles(True)
                got = nv.matmul(qt, w, x)
                msg = f"K={k} N={n} B={b} threads={threads}"
                if kq:
                    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max(), err_msg=msg)
                    if b == 3 and threads == 1:
                        wf = ref_weight(qt, w, k).astype(np.float64)
                        ref = quant_act(x, 256).astype(np.float64) @ wf.T
                        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max(),
                                                   err_msg=msg)
                elif b >= 3:
                    np.testing.assert_array_equal(got, want, err_msg=msg)
                else:
                    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=msg)
            x = rng.standard_normal((4, k)).astype(np.float32)
            good = nv.matmul(qt, w, x)
            saved = out.copy()
            out[:64] ^= 0x55  # the first pair's (Q4_K: super-block's) scales
            bad = nv.matmul(qt, w, x)
            assert not np.allclose(bad[:, :16], good[:, :16]), "the tiles were not read"
            np.testing.assert_array_equal(bad[:, 16:], good[:, 16:])
            out[:] = saved
            del w  # the registration goes with the weight array
            assert nv.tiles_count() == before
    finally:
        nv.set_threads(old_threads)
        nv.set_tiles_min_b(old_min)
        nv.set_tiles(True)
