"""CUDA backend vs the CPU backend, op by op and end to end.

With an NVIDIA GPU and CuPy the kernels run there; without one (CI) every test runs the same
``native/cuda`` kernels on the emulated device (``EDGERUN_CUDA=emulate``, edgerun/backends/cuda_emu.py):
nothing is skipped. ``EDGERUN_CUDA=emulate`` forces the emulated device on a GPU machine too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgerun.backends import cuda
from edgerun.backends.base import QTensor
from edgerun.models.base import apply_rope, attention, rms_norm, rope_cos_sin
from edgerun.quant.traits import TRAITS, dequantize, quantize
from tests.synth import bench_gpu_module


def _real_gpu() -> bool:
    if cuda.emulated():
        return False
    return cuda.available()


REAL_GPU = _real_gpu()


@pytest.fixture(scope="module", autouse=True)
def device() -> str:
    """"real" on a GPU machine, else "emulated" (EDGERUN_CUDA=emulate for the whole module)."""
    if REAL_GPU:
        yield "real"
        return
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGERUN_CUDA", "emulate")
    assert cuda.available(), "the emulated device needs g++"
    yield "emulated"
    mp.undo()

QTYPES = [0, 1, 30, 2, 3, 6, 7, 8, 12, 13, 14]


@pytest.fixture(scope="module")
def be(device: str) -> cuda.CudaBackend:
    return cuda.CudaBackend()


def make_runner(*a, **k):
    """edgerun.runtime.factory.make_runner, imported when a test first needs it."""
    from edgerun.runtime.factory import make_runner as mk

    return mk(*a, **k)


def make_weight(qtype: int, n: int, k: int, seed: int = 0) -> tuple[QTensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(np.float32)
    name = TRAITS[qtype].name
    if name == "F16":
        raw = x.astype(np.float16).view(np.uint8)
    elif name == "BF16":
        raw = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        raw = quantize(x, qtype)
    w = QTensor(f"w_{name}", qtype, k, n, raw)
    ref = raw if name == "F32" else dequantize(raw, qtype, k)
    return w, ref


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("b", [1, 3, 8, 11, 40])
def test_matmul(be: cuda.CudaBackend, qtype: int, b: int) -> None:
    w, ref = make_weight(qtype, 100, 512, seed=qtype)
    x = np.random.default_rng(b).standard_normal((b, 512)).astype(np.float32)
    got = be.matmul(w, x)
    want = x @ ref.T
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("qtype", QTYPES)
def test_get_rows(be: cuda.CudaBackend, qtype: int) -> None:
    w, ref = make_weight(qtype, 50, 256, seed=qtype + 1)
    ids = np.array([0, 7, 49, 7, 3], np.int32)
    np.testing.assert_allclose(be.get_rows(w, ids), ref[ids], rtol=1e-6, atol=1e-6)


def test_matmul_big_batch_chunked(be: cuda.CudaBackend) -> None:
    w, ref = make_weight(2, 300, 256)
    old = be.chunk_bytes
    be.chunk_bytes = 64 * 256 * 4  # 64 rows per chunk
    try:
        x = np.random.default_rng(0).standard_normal((33, 256)).astype(np.float32)
        np.testing.assert_allclose(be.matmul(w, x), x @ ref.T, rtol=2e-4, atol=1e-2)
    finally:
        be.chunk_bytes = old


@pytest.mark.parametrize("qtype", QTYPES)
def test_matmul_tensor_core_path(be: cuda.CudaBackend, qtype: int) -> None:
    # f16 dequantize + cuBLAS gemmEx (f16 in, f32 accumulate and out), chunked, into an output slice
    w, ref = make_weight(qtype, 300, 256, seed=qtype)
    old = be.half_gemm, be.chunk_bytes
    be.half_gemm, be.chunk_bytes = True, 128 * 256 * 2  # 128 rows per chunk: 3 chunks
    try:
        x = np.random.default_rng(qtype).standard_normal((33, 256)).astype(np.float32)
        want = x @ ref.T
        np.testing.assert_allclose(be.matmul(w, x), want, rtol=2e-4, atol=2e-3 * np.abs(want).max())
    finally:
        be.half_gemm, be.chunk_bytes = old


@pytest.mark.parametrize("d", [16, 64, 896, 4096])
def test_rms_norm(be: cuda.CudaBackend, d: int) -> None:
    rng = np.random.default_rng(d)
    x = rng.standard_normal((5, d)).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    np.testing.assert_allclose(be.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6), rtol=1e-4, atol=1e-5)


def test_qk_norm(be: cuda.CudaBackend) -> None:
    cp = be.cp
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 8, 64)).astype(np.float32)
    k = rng.standard_normal((3, 2, 64)).astype(np.float32)
    wq, wk = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    qd, kd = cp.asarray(q), cp.asarray(k)
    be.synchronize()
    be.qk_norm_dev(qd, kd, be.vector(wq), be.vector(wk), 1e-6)
    np.testing.assert_allclose(be.to_host(qd), rms_norm(q, wq, 1e-6), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(be.to_host(kd), rms_norm(k, wk, 1e-6), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_rope(be: cuda.CudaBackend, neox: bool, scale: float) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 64)).astype(np.float32)
    pos = np.array([0, 1, 2, 100, 4095, 30000])
    cos, sin = rope_cos_sin(pos * scale, 64, 1e6)
    want = apply_rope(x, cos, sin, neox)
    np.testing.assert_allclose(be.rope(x, pos, 1e6, neox, scale), want, rtol=1e-4, atol=1e-4)


def _paged_case(rng: np.random.Generator, ctx_lens: list[int], bs: int, kvh: int, hd: int):
    n_blocks = sum(-(-c // bs) for c in ctx_lens) + 3
    perm = rng.permutation(n_blocks)
    # values exact in f16 (the device cache's type), so the float reference sees the same caches
    kc = rng.standard_normal((n_blocks * bs, kvh, hd)).astype(np.float16).astype(np.float32)
    vc = rng.standard_normal((n_blocks * bs, kvh, hd)).astype(np.float16).astype(np.float32)
    max_blocks = max(-(-c // bs) for c in ctx_lens)
    tables = np.zeros((len(ctx_lens), max_blocks), np.int32)
    used = 0
    for j, c in enumerate(ctx_lens):
        nb = -(-c // bs)
        tables[j, :nb] = perm[used: used + nb]
        used += nb
    return kc, vc, tables


def _slots(table: np.ndarray, n: int, bs: int) -> np.ndarray:
    p = np.arange(n)
    return table[p // bs].astype(np.int64) * bs + p % bs


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("n_split", [1, 3, None])
def test_paged_decode_attention(be: cuda.CudaBackend, window: int, n_split: int | None) -> None:
    rng = np.random.default_rng(3)
    bs, h, kvh, hd = 16, 8, 2, 64
    ctx = [1, 17, 300, 1000]
    kc, vc, tables = _paged_case(rng, ctx, bs, kvh, hd)
    q = rng.standard_normal((len(ctx), h, hd)).astype(np.float32)
    pos = np.array([c - 1 for c in ctx])
    got = be.paged_attention(q, kc, vc, np.arange(len(ctx)), pos, tables, bs, 0.125, window, n_split)
    for j, c in enumerate(ctx):
        sl = _slots(tables[j], c, bs)
        want = attention(q[j: j + 1], kc[sl], vc[sl], pos[j: j + 1], 0.125, window)
        np.testing.assert_allclose(got[j], want[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [0, 7])
@pytest.mark.parametrize("hd", [64, 128, 256])
def test_paged_prefill_attention(be: cuda.CudaBackend, window: int, hd: int) -> None:
    rng = np.random.default_rng(4)
    bs, h, kvh = 16, 4, 1
    start, t = 20, 45  # 20 cached tokens, 45 new ones
    kc, vc, tables = _paged_case(rng, [start + t], bs, kvh, hd)
    q = rng.standard_normal((t, h, hd)).astype(np.float32)
    pos = np.arange(start, start + t)
    sl = _slots(tables[0], start + t, bs)
    want = attention(q, kc[sl], vc[sl], pos, 1 / np.sqrt(hd), window)
    for prefill in (True, False):
        got = be.paged_attention(q, kc, vc, np.zeros(t, np.int32), pos, tables, bs, 1 / np.sqrt(hd), window,
                                 prefill=prefill)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_kv_write(be: cuda.CudaBackend) -> None:
    cp = be.cp
    rng = np.random.default_rng(5)
    kc = cp.zeros((64, 2, 16), cp.float16)
    vc = cp.zeros((64, 2, 16), cp.float16)
    k = rng.standard_normal((5, 2, 16)).astype(np.float32)
    v = rng.standard_normal((5, 2, 16)).astype(np.float32)
    slots = np.array([3, 40, 41, 0, 63], np.int32)
    be.synchronize()
    be.kv_write_dev(kc, vc, cp.asarray(k), cp.asarray(v), cp.asarray(slots))
    kh, vh = be.to_host(kc), be.to_host(vc)
    np.testing.assert_array_equal(kh[slots], k.astype(np.float16))  # round to nearest even, as numpy
    np.testing.assert_array_equal(vh[slots], v.astype(np.float16))
    assert np.count_nonzero(kh) == k.size - np.count_nonzero(k.astype(np.float16) == 0)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def synth_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bench = bench_gpu_module()
    shape = bench.Shape(f"synth-{request.param}", request.param, 3, 256, 512, 4, 2, 600,
                        qkv_bias=request.param == "qwen2", tied=request.param == "qwen2", ctx=512)
    return bench.write_synthetic_gguf(tmp_path_factory.mktemp("e2e") / f"{request.param}.gguf", shape,
                                      qtype=12 if request.param == "llama" else 2, seed=1, gain=8.0,
                                      exact=True)


def _steps(runner, n_decode: int = 4) -> list[np.ndarray]:
    from edgerun.runtime.runner import SeqInput

    bs = runner.block_size
    lens = [7, 21, 3]
    tables = [np.arange(j * 8, j * 8 + 8, dtype=np.int32) for j in range(len(lens))]
    rng = np.random.default_rng(0)
    toks = [rng.integers(3, runner.args.vocab_size, n).astype(np.int32) for n in lens]
    out = runner.forward([SeqInput(t, 0, tb[: -(-len(t) // bs)], want_all_logits=True)
                          for t, tb in zip(toks, tables, strict=True)])
    pos = list(lens)
    for step in range(n_decode):
        nxt = [np.array([(step * 31 + j * 7) % runner.args.vocab_size], np.int32) for j in range(len(lens))]
        out += runner.forward([SeqInput(t, p, tb) for t, p, tb in zip(nxt, pos, tables, strict=True)])
        pos = [p + 1 for p in pos]
    return out


@pytest.mark.parametrize("setup", [
    dict(placement="hybrid"), dict(placement="auto"), dict(placement="gpu"),
    dict(placement="hybrid", overlap=False), dict(placement="hybrid", graphs=False),
    dict(placement="auto", overrides=[r"blk\.1\.=cpu"]),
    dict(placement="auto", overrides=[r"blk\.[02]\.ffn=cpu", r"^output\.=cpu"]),
])
def test_end_to_end_matches_cpu(synth_model: Path, setup: dict) -> None:
    _end_to_end(synth_model, setup)


# The GPU's KV cache is f16, as the CPU runner's default: both round K and V the same way.
_CPU_STEPS: dict[tuple[str, str, int], list[np.ndarray]] = {}


def _cpu_steps(path: Path, kind: str = "steps", n_decode: int = 4) -> list[np.ndarray]:
    """The CPU runner's logits for ``_steps`` / ``_mixed_steps`` (computed once per model: the emulated
    runs are the slow part, the reference need not repeat)."""
    from edgerun.runtime.runner import Runner

    key = (str(path), kind, n_decode)
    if key not in _CPU_STEPS:
        cpu = Runner(path, n_ctx=256, num_blocks=32, block_size=16, backend="reference", kv_type="f16")
        _CPU_STEPS[key] = _steps(cpu, n_decode) if kind == "steps" else _mixed_steps(cpu)
    return _CPU_STEPS[key]


def _end_to_end(synth_model: Path, setup: dict) -> None:
    from edgerun.runtime.hybrid import HybridRunner

    want = _cpu_steps(synth_model)
    hy = make_runner(synth_model, vram_bytes=8 << 30, n_ctx=256, num_blocks=32, block_size=16,
                     backend="reference", kv_type="f16", **setup)
    assert isinstance(hy, HybridRunner) and hy.plan.uses_gpu
    got = _steps(hy)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3 * max(1.0, float(np.abs(w).max())))


def test_tight_plan_mixes_layers(synth_model: Path) -> None:
    from edgerun.runtime.hybrid import HybridRunner
    from edgerun.runtime.planner import CUBLAS_WORKSPACE, RESERVE_FIXED, dequant_scratch, plan_placement
    from edgerun.runtime.runner import Runner

    cpu = Runner(synth_model, n_ctx=256, num_blocks=32, block_size=16, backend="reference", kv_type="f16")
    a = cpu.args
    full = plan_placement(cpu.gguf, a.n_layers, a.n_kv_heads, a.head_dim, ctx=512, vram_bytes=8 << 30)
    layer0 = sum(t.bytes for t in full.tensors.values() if t.layer == 0 and t.group == "attn")
    usable = layer0 + full.kv_layer_bytes + 1024
    fixed = RESERVE_FIXED + dequant_scratch(cpu.gguf.tensors) + CUBLAS_WORKSPACE
    # mode "hybrid": `auto` may predict the all-CPU layout faster than one GPU layer (it depends on
    # this machine's measured CPU speed); the mix itself is what this test runs
    plan = plan_placement(cpu.gguf, a.n_layers, a.n_kv_heads, a.head_dim, ctx=512, mode="hybrid",
                          vram_bytes=int((usable + fixed) / 0.95) + 2)
    assert [plan.layers[i]["attn"] for i in range(3)] == ["gpu", "cpu", "cpu"]
    hy = HybridRunner(synth_model, plan=plan, n_ctx=256, num_blocks=32, block_size=16, backend="reference",
                      kv_type="f16")
    for g, w in zip(_steps(hy), _cpu_steps(synth_model), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3 * max(1.0, float(np.abs(w).max())))


# ----------------------------------------------------------------------------- more end to end


@pytest.fixture(scope="module")
def gemma_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bench = bench_gpu_module()
    shape = bench.Shape("synth-gemma3", "gemma3", 3, 128, 256, 4, 2, 600, tied=True, ctx=512, window=4)
    return bench.write_synthetic_gguf(tmp_path_factory.mktemp("g3") / "gemma3.gguf", shape, qtype=8, seed=3,
                                      gain=8.0, exact=True)


@pytest.mark.parametrize("placement", ["hybrid", "gpu"])
def test_gemma3_end_to_end(gemma_model: Path, placement: str) -> None:
    # sliding-window layers, QK-norm, post-norms and GELU on the GPU path
    _end_to_end(gemma_model, dict(placement=placement))


def _mixed_steps(runner) -> list[np.ndarray]:
    """Steps whose batches mix prefill and decode rows: A and B prefill, then A decodes while C
    prefills and B decodes, then all three decode."""
    from edgerun.runtime.runner import SeqInput

    rng = np.random.default_rng(7)
    v = runner.args.vocab_size
    tabs = [np.arange(j * 4, j * 4 + 4, dtype=np.int32) for j in range(3)]
    a, b, c = (rng.integers(3, v, n).astype(np.int32) for n in (7, 5, 9))
    out = runner.forward([SeqInput(a, 0, tabs[0], want_all_logits=True), SeqInput(b, 0, tabs[1])])
    out += runner.forward([SeqInput(np.array([11], np.int32), 7, tabs[0]),
                           SeqInput(c, 0, tabs[2], want_all_logits=True),
                           SeqInput(np.array([12], np.int32), 5, tabs[1])])
    for step in range(3):
        out += runner.forward([SeqInput(np.array([13 + step], np.int32), p + step, t)
                               for p, t in zip((8, 6, 9), (tabs[0], tabs[1], tabs[2]), strict=True)])
    return out


@pytest.mark.parametrize("placement", ["hybrid", "gpu"])
def test_batches_mixing_prefill_and_decode(synth_model: Path, placement: str) -> None:

    kw = dict(n_ctx=256, num_blocks=32, block_size=16, backend="reference", kv_type="f16")
    want = _cpu_steps(synth_model, "mixed")
    got = _mixed_steps(make_runner(synth_model, placement=placement, vram_bytes=8 << 30, **kw))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3 * max(1.0, float(np.abs(w).max())))


def test_graphs_replay_and_recapture_when_n_split_changes(synth_model: Path) -> None:

    kw = dict(n_ctx=256, num_blocks=32, block_size=16, backend="reference", kv_type="f16")
    want = _cpu_steps(synth_model, n_decode=8)
    for placement in ("gpu", "hybrid"):
        hy = make_runner(synth_model, placement=placement, vram_bytes=8 << 30, overlap=False, **kw)
        hy.gpu_backend.split_keys = 4  # a new split count every 4 keys: graphs must be re-captured
        got = _steps(hy, n_decode=8)  # per shape: one eager step, then capture, then replay
        assert hy.model.graphs, "capture should have worked"
        splits = {key[-1] for key in hy.model.captured}
        assert len(splits) >= 2, f"expected graphs for several split counts, got {splits}"
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3 * max(1.0, float(np.abs(w).max())))


# ----------------------------------------------------------------------------- real models

REAL_MODELS = ["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]


def _model_path(name: str) -> Path:
    import os

    p = Path(os.environ.get("EDGERUN_MODELS", Path(__file__).resolve().parents[1] / "models")) / name
    if not p.is_file():
        pytest.skip(f"{name} not downloaded (set EDGERUN_MODELS)")
    return p


def _greedy(runner, n: int = 8) -> list[int]:
    from edgerun.generate import step_tokens
    from edgerun.text.sampling import SamplingParams

    # a prompt whose greedy steps all win by a margin (>= 0.19 logits on the CPU path for both models),
    # so f16/f32 rounding differences between the devices cannot flip a near tie
    ids = runner.tokenizer.encode("# Python: sum of a list\n")
    return list(step_tokens(runner, ids, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)))


@pytest.fixture(scope="module", params=REAL_MODELS, ids=["qwen0.5b", "gemma270m"])
def real_model(request: pytest.FixtureRequest) -> tuple[Path, list[int]]:
    from edgerun.runtime.runner import Runner

    path = _model_path(request.param)
    return path, _greedy(Runner(path, n_ctx=64))


@pytest.mark.parametrize("placement", ["hybrid", "gpu"])
def test_real_model_greedy_tokens_match_cpu(real_model: tuple[Path, list[int]], placement: str) -> None:
    from edgerun.runtime.hybrid import HybridRunner

    path, want = real_model
    hy = make_runner(path, placement=placement, vram_bytes=8 << 30, n_ctx=64)
    assert isinstance(hy, HybridRunner)
    assert _greedy(hy) == want


# ----------------------------------------------------------------------------- design points


def _counting_ffn(hy) -> list[int]:
    calls: list[int] = []
    inner = hy.model.cpu_ffn

    def counted(ly, x):
        calls.append(id(ly))
        return inner(ly, x)

    hy.model.cpu_ffn = counted
    return calls


def test_ffn_weights_read_once_per_layer_per_step(synth_model: Path) -> None:

    kw = dict(n_ctx=256, num_blocks=32, block_size=16, backend="reference")
    hy = make_runner(synth_model, placement="hybrid", vram_bytes=8 << 30, **kw)
    n_layers = hy.args.n_layers
    hy.model.llc_bytes = 0  # FFN weights that do not fit the cache: overlap would stream them twice
    calls = _counting_ffn(hy)
    out = _steps(hy, n_decode=2)  # three sequences per step
    assert len(calls) == 3 * n_layers, "each layer's CPU FFN must run once per step for the whole batch"
    hy2 = make_runner(synth_model, placement="hybrid", vram_bytes=8 << 30, **kw)
    hy2.model.llc_bytes = 1 << 40  # FFN weights in the cache: the second half re-reads them from there
    calls2 = _counting_ffn(hy2)
    out2 = _steps(hy2, n_decode=2)
    assert len(calls2) == 2 * 3 * n_layers
    for g, w in zip(out2, out, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3 * max(1.0, float(np.abs(w).max())))


def test_no_graph_capture_above_the_batched_threshold(synth_model: Path) -> None:

    kw = dict(n_ctx=256, num_blocks=32, block_size=16, backend="reference")
    want = _cpu_steps(synth_model, n_decode=4)
    hy = make_runner(synth_model, placement="gpu", vram_bytes=8 << 30, overlap=False, **kw)
    hy.gpu_backend.batched_threshold = 2  # the 3-sequence decode steps take the dequantize + cuBLAS path
    got = _steps(hy, n_decode=4)
    assert hy.model.graphs and hy.model.captured == []
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3 * max(1.0, float(np.abs(w).max())))


def test_hybrid_plan_puts_the_head_on_the_gpu(synth_model: Path) -> None:

    hy = make_runner(synth_model, placement="hybrid", vram_bytes=8 << 30, n_ctx=256, num_blocks=32,
                     block_size=16, backend="reference")
    assert hy.plan.head_device == "gpu" and hy.gpu.head_on_gpu
    assert all(d == {"attn": "gpu", "ffn": "cpu"} for d in hy.plan.layers.values())


def test_decode_split_count_follows_the_sm_count(be: cuda.CudaBackend) -> None:
    old = be.sm_count
    try:
        be.sm_count = 128  # RTX 4090: 2 blocks per SM
        assert be.n_split_for(8192, rows=1, heads=32) == 8
        assert be.n_split_for(8192, rows=8, heads=32) == 1
        assert be.n_split_for(100, rows=1, heads=4) == 2  # no split under split_keys keys
        be.sm_count = 132  # H100
        assert be.n_split_for(8192, rows=1, heads=8) == 33
    finally:
        be.sm_count = old


def _long_prefill(runner) -> list[np.ndarray]:
    from edgerun.runtime.runner import SeqInput

    rng = np.random.default_rng(11)
    toks = rng.integers(3, runner.args.vocab_size, 40).astype(np.int32)
    tab = np.arange(0, 4, dtype=np.int32)
    out = runner.forward([SeqInput(toks, 0, tab, want_all_logits=True)])
    out += runner.forward([SeqInput(np.array([9], np.int32), 40, tab)])
    return out


def test_prefill_streams_ffn_weights_to_the_gpu(synth_model: Path) -> None:
    from edgerun.runtime.runner import Runner

    kw = dict(n_ctx=256, num_blocks=32, block_size=16, backend="reference")
    want = _long_prefill(Runner(synth_model, kv_type="f16", **kw))
    hy = make_runner(synth_model, placement="hybrid", vram_bytes=8 << 30, **kw)
    calls = _counting_ffn(hy)
    got = _long_prefill(hy)
    n_layers = hy.args.n_layers
    assert len(calls) == n_layers, "the 40-token prefill runs its FFNs on the GPU, the decode step on the CPU"
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3 * max(1.0, float(np.abs(w).max())))
