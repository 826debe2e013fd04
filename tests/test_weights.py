"""Weights moved into transparent huge pages: same values, same outputs, and the opt-outs."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.backends.base import QTensor
from edgerun.runtime import weights
from edgerun.runtime.runner import Runner, SeqInput
from tests.synth import bench_gpu_module


def _thp_ok() -> bool:
    return weights.hugepages_wanted(1 << 20)


def test_pin_copies_values_and_dedupes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "hugepages_wanted", lambda total: True)
    rng = np.random.default_rng(0)
    a = QTensor("a", 8, 64, 5, rng.integers(0, 256, (5, 68), dtype=np.uint8))
    b = QTensor("b", 0, 3, 7, rng.standard_normal((7, 3)).astype(np.float32))
    before = [a.data.copy(), b.data.copy()]
    moved = weights.pin_in_hugepages([a, b, a])  # `a` twice: a tied table is copied once
    assert moved == 64 * (-(-a.data.nbytes // 64)) + 64 * (-(-b.data.nbytes // 64))
    for t, old in zip((a, b), before, strict=True):
        np.testing.assert_array_equal(t.data, old)
        assert t.data.dtype == old.dtype and t.data.shape == old.shape and t.data.flags.c_contiguous
        assert t.data.ctypes.data % 64 == 0
    assert a.data.base is not None and np.shares_memory(a.data.base, b.data.base)


def test_opt_outs(monkeypatch: pytest.MonkeyPatch) -> None:
    t = QTensor("a", 8, 32, 2, np.zeros((2, 34), np.uint8))
    monkeypatch.setenv("EDGERUN_HUGEPAGES", "0")
    assert not weights.hugepages_wanted(1 << 20)
    assert weights.pin_in_hugepages([t]) == 0
    monkeypatch.delenv("EDGERUN_HUGEPAGES")
    monkeypatch.setattr(weights, "_available_bytes", lambda: 3 << 20)
    assert not weights.hugepages_wanted(2 << 20)  # over half of the available memory
    monkeypatch.setattr(weights, "_thp_mode", lambda: "never")
    assert not weights.hugepages_wanted(1 << 10)


def test_runner_outputs_equal_with_and_without(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _thp_ok():
        pytest.skip("transparent huge pages are not offered here")
    bench = bench_gpu_module()
    shape = bench.Shape("synth", "qwen2", 2, 256, 512, 4, 2, 300, qkv_bias=True, ctx=128)
    path = bench.write_synthetic_gguf(tmp_path / "m.gguf", shape, qtype=8, seed=1, exact=True)
    outs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("EDGERUN_HUGEPAGES", flag)
        r = Runner(path, n_ctx=64, n_threads=2)
        assert (r.wait_pinned(60) > 0) == (flag == "1")
        (lg,) = r.forward([SeqInput(np.arange(3, 12, dtype=np.int32), 0, r.contiguous_table(9))])
        outs.append(lg)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_background_copy_swaps_in_between_steps(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner copies its weights in the background: steps before the swap read the file
    mapping, the first step after the copy is done swaps the copies in, and outputs never change."""
    monkeypatch.setattr(weights, "hugepages_wanted", lambda total: True)
    bench = bench_gpu_module()
    shape = bench.Shape("synth", "qwen2", 2, 256, 512, 4, 2, 300, qkv_bias=True, ctx=128)
    path = bench.write_synthetic_gguf(tmp_path / "m.gguf", shape, qtype=8, seed=1, exact=True)
    gate = weights.threading.Event()
    real_copy = weights.PinJob._copy

    def held_copy(self: weights.PinJob) -> None:
        gate.wait(60)
        real_copy(self)

    monkeypatch.setattr(weights.PinJob, "_copy", held_copy)
    r = Runner(path, n_ctx=64, n_threads=2)
    before = r.model.layers[0].wq.data
    step = SeqInput(np.arange(3, 12, dtype=np.int32), 0, r.contiguous_table(9))
    (first,) = r.forward([step])
    assert r.pinned_bytes == 0 and r.model.layers[0].wq.data is before  # copy held back: not swapped
    gate.set()
    assert r.wait_pinned(60) > 0
    after = r.model.layers[0].wq.data
    assert after is not before and not np.shares_memory(after, before)
    np.testing.assert_array_equal(after, before)
    (second,) = r.forward([step])
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(("pin", "qtype"), [("0", 8), ("1", 8), ("1", 12), ("1", 14)])
def test_batch_tiles_serve_batches_with_equal_outputs(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                      pin: str, qtype: int) -> None:
    """A runner with batch tiles registers them for the arrays it multiplies by (the huge-page
    copies when those are made, else the file mapping) and a batch of 4 sequences gives the same
    logits as without them (Q8_0: the same bits); the tiles go when the runner does."""
    from edgerun.backends import native

    if not native.available() or native.tiles_size(8, 16, 256) == 0:
        pytest.skip("no batch tiles on this CPU")
    monkeypatch.setenv("EDGERUN_HUGEPAGES", pin)
    bench = bench_gpu_module()
    shape = bench.Shape("synth", "qwen2", 2, 256, 512, 4, 2, 300, qkv_bias=True, ctx=128)
    path = bench.write_synthetic_gguf(tmp_path / "m.gguf", shape, qtype=qtype, seed=1, exact=True)
    before = native.tiles_count()
    r = Runner(path, n_ctx=64, n_threads=2, backend="native", batch_tiles=True, num_blocks=16)
    r.wait_pinned(60)
    n_tiled = len({id(t) for t in r.model.tensors() if native.tiles_size(t.qtype, t.n, t.k)})
    assert r.tile_bytes > 0 and native.tiles_count() == before + n_tiled
    seqs = [SeqInput(np.arange(3 + i, 12 + i, dtype=np.int32), 0, r.contiguous_table(9, 4 * i))
            for i in range(4)]
    r.forward(seqs)
    step = [SeqInput(np.array([20 + i], np.int32), 9, r.contiguous_table(10, 4 * i)) for i in range(4)]
    try:
        native.set_tiles(False)
        want = r.forward(step)
    finally:
        native.set_tiles(True)
    got = r.forward(step)
    for g, w in zip(got, want, strict=True):  # the K-quants' tiles sum in another order
        np.testing.assert_allclose(g, w, rtol=0, atol=0 if qtype == 8 else 1e-4 * np.abs(w).max())
    del r, got, want, seqs, step
    import gc

    gc.collect()
    assert native.tiles_count() == before
