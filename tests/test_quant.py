"""Quant traits (reference dequantizers) and the Numba CPU kernels."""

from __future__ import annotations

import gguf.quants
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edgerun.backends import numba_cpu as nc
from edgerun.backends.base import QTensor
from edgerun.quant.traits import TRAITS, dequantize, quantize, row_bytes

ALL = sorted(TRAITS)
IDS = [TRAITS[q].name for q in ALL]


def random_blocks(qtype: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid raw rows (N, row_bytes): random bytes with sane f16 scales (F32: float32 (N, K))."""
    t = TRAITS[qtype]
    if qtype == GGMLQuantizationType.F32:
        return rng.standard_normal((n, k)).astype(np.float32)
    raw = rng.integers(0, 256, size=(n, row_bytes(qtype, k)), dtype=np.uint8)
    blocks = raw.reshape(-1, t.type_size).view(t.dtype).reshape(-1)
    for field in ("d", "m", "dmin"):
        if field in t.dtype.names:
            blocks[field] = rng.uniform(-0.05, 0.05, blocks.shape[0]).astype(np.float16)
    if qtype == GGMLQuantizationType.F16:
        blocks["v"] = rng.standard_normal(blocks.shape[0]).astype(np.float16)
    if qtype == GGMLQuantizationType.BF16:
        f = rng.standard_normal(blocks.shape[0]).astype(np.float32)
        blocks["v"] = (f.view(np.uint32) >> 16).astype(np.uint16)
    return raw


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request):
    old = nc.get_threads()
    nc.set_threads(request.param)
    yield request.param
    nc.set_threads(old)


def test_traits_table_matches_gguf() -> None:
    for qt, t in TRAITS.items():
        assert (t.block_size, t.type_size) == GGML_QUANT_SIZES[GGMLQuantizationType(qt)]
        assert t.dtype.itemsize == t.type_size
        assert t.name == GGMLQuantizationType(qt).name
    assert row_bytes(GGMLQuantizationType.Q4_K, 512) == 288
    with pytest.raises(ValueError):
        row_bytes(GGMLQuantizationType.Q8_0, 40)


@pytest.mark.parametrize("qtype", ALL, ids=IDS)
def test_reference_dequantize_matches_gguf(qtype: int) -> None:
    rng = np.random.default_rng(qtype)
    k, n = 512, 3
    raw = random_blocks(qtype, n, k, rng)
    mine = dequantize(raw, qtype, k)
    assert mine.shape == (n, k) and mine.dtype == np.float32
    if qtype == GGMLQuantizationType.F32:
        np.testing.assert_array_equal(mine, raw)
        return
    ref = gguf.quants.dequantize(raw, GGMLQuantizationType(qtype)).reshape(n, k)
    np.testing.assert_array_equal(mine, ref.astype(np.float32))


@pytest.mark.parametrize("qtype", ALL, ids=IDS)
def test_quantize_roundtrip(qtype: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    q = quantize(x, qtype)
    y = dequantize(q, qtype, 512)
    bits = {"Q4": 0.15, "Q5": 0.08, "Q6": 0.04, "Q8": 0.01}
    tol = bits.get(TRAITS[qtype].name[:2], 0.01)
    assert np.abs(y - x).max() <= tol * np.abs(x).max()


# per-type tolerance relative to max |ref|: float32 accumulation order differs from numpy's
TOL = 2e-5
INT8_DECODE = (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q8_0)


def _q8_per32(x: np.ndarray) -> np.ndarray:
    """x quantized to int8 per 32 values and back, as the B=1 legacy-type kernels do."""
    xb = x.reshape(x.shape[0], -1, 32).astype(np.float32)
    m = np.abs(xb).max(axis=-1, keepdims=True)
    d = m / np.float32(127.0)
    inv = np.where(m > 0, np.float32(127.0) / np.where(m > 0, m, 1), 0).astype(np.float32)
    return (np.round(xb * inv) * d).reshape(x.shape)


@pytest.mark.parametrize("qtype", ALL, ids=IDS)
def test_numba_matmul_and_get_rows(qtype: int, threads: int) -> None:
    rng = np.random.default_rng(100 + qtype)
    bs = max(TRAITS[qtype].block_size, 32)
    for n, k, b in ((7, bs, 1), (7, 2 * bs, 3), (5, 3 * bs, 1), (9, 2 * bs, 12)):
        w = random_blocks(qtype, n, k, rng)
        wd = dequantize(w, qtype, k).astype(np.float64)
        x = rng.standard_normal((b, k)).astype(np.float32)
        y = nc.matmul(qtype, w, x)
        xr = _q8_per32(x) if b == 1 and qtype in INT8_DECODE else x  # int8-activation decode kernels
        ref = xr.astype(np.float64) @ wd.T
        assert y.shape == (b, n) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=0, atol=TOL * max(1.0, np.abs(ref).max()))
        ids = np.array([n - 1, 0, 2, 2])
        np.testing.assert_array_equal(nc.get_rows(qtype, w, ids, k), wd[ids].astype(np.float32))


def test_numba_backend_protocol() -> None:
    rng = np.random.default_rng(7)
    qt = int(GGMLQuantizationType.Q4_K)
    w = random_blocks(qt, 6, 256, rng)
    qtensor = QTensor("w", qt, 256, 6, w)
    be = nc.NumbaBackend()
    assert be.name == "numba"
    assert be.supports("matmul", qt) and be.supports("get_rows", qt)
    assert not be.supports("matmul", int(GGMLQuantizationType.Q2_K))
    x = rng.standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_allclose(be.matmul(qtensor, x), nc.matmul(qt, w, x))
    assert be.get_rows(qtensor, np.array([5])).shape == (1, 256)
    with pytest.raises(ValueError):
        nc.matmul(qt, w, np.zeros((1, 128), np.float32))
