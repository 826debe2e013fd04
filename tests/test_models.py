"""Model code on tiny synthetic GGUF files: batching, paging, incremental decode, backends."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from edgerun.backends.reference import ReferenceBackend
from edgerun.models.base import KVCache, ModelLoadError, SeqBatch, Transformer
from edgerun.models.registry import model_class
from edgerun.quant.gguf_file import GGUFFile
from tests.synth import write_model

VOCAB = 97


def load(path, backend=None) -> Transformer:
    gf = GGUFFile(path)
    return model_class(gf.architecture)(gf, backend or ReferenceBackend(), VOCAB)


def native_without(*methods: str):
    """A native backend (2 threads) whose class sets the named one-call methods to None, so that
    ``implements`` reports those abilities absent and the forward pass takes the split path."""
    from edgerun.backends import native as nv

    if not nv.available():
        pytest.skip("native library not built")
    be = type("PartNative", (nv.NativeBackend,), dict.fromkeys(methods))()
    be.set_threads(2)
    return be


def run(model: Transformer, seqs, kv=None, block_size=4, tables=None, want_all=True, kv_type="f16"):
    """seqs: list of (tokens, start_pos); contiguous block tables unless given."""
    a = model.args
    kv = kv or KVCache(a.n_layers, 64, block_size, a.n_kv_heads, a.head_dim, kv_type)
    toks, pos, starts, lens, ctxs, slots = [], [], [], [], [], []
    off = 0
    for j, (t, s0) in enumerate(seqs):
        ctx = s0 + len(t)
        table = tables[j] if tables else np.arange(j * 16, j * 16 + 16)
        toks.append(np.asarray(t, np.int32))
        pos.append(np.arange(s0, ctx))
        starts.append(off)
        lens.append(len(t))
        ctxs.append(ctx)
        slots.append(kv.slots(table, 0, ctx))
        off += len(t)
    b = SeqBatch(np.concatenate(toks), np.concatenate(pos), starts, lens, ctxs, slots,
                 [want_all] * len(seqs))
    return model.forward(b, kv), kv


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def model_path(request, tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / f"{request.param}.gguf"
    return write_model(p, arch=request.param, window=5)


def test_incremental_decode_equals_full_prefill(model_path):
    m = load(model_path)
    toks = list(np.random.default_rng(1).integers(0, VOCAB, 12))
    (full,), _ = run(m, [(toks, 0)])
    (first,), kv = run(m, [(toks[:7], 0)])
    np.testing.assert_allclose(first, full[:7], rtol=1e-4, atol=1e-4)
    for p in range(7, 12):
        (step,), kv = run(m, [([toks[p]], p)], kv=kv)
        np.testing.assert_allclose(step[0], full[p], rtol=1e-4, atol=1e-4)


def test_batched_sequences_equal_alone(model_path):
    m = load(model_path)
    rng = np.random.default_rng(2)
    a, b = list(rng.integers(0, VOCAB, 9)), list(rng.integers(0, VOCAB, 5))
    (la,), _ = run(m, [(a, 0)])
    (lb,), _ = run(m, [(b, 0)])
    (ba, bb), _ = run(m, [(a, 0), (b, 0)])
    np.testing.assert_allclose(ba, la, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bb, lb, rtol=1e-4, atol=1e-4)


def test_scattered_block_table_changes_nothing(model_path):
    m = load(model_path)
    toks = list(np.random.default_rng(3).integers(0, VOCAB, 11))
    (ref,), _ = run(m, [(toks, 0)])
    (got,), _ = run(m, [(toks, 0)], tables=[np.array([40, 3, 17, 9])])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_sliding_window_forgets_old_tokens(tmp_path):
    # One layer, and in gemma3 layer 0 is a sliding-window layer (window 4).
    m = load(write_model(tmp_path / "g.gguf", arch="gemma3", n_layers=1, window=4))
    toks = list(np.random.default_rng(4).integers(1, VOCAB, 10))
    (x,), _ = run(m, [(toks, 0)])
    other = [(toks[0] + 1) % VOCAB] + toks[1:]
    (y,), _ = run(m, [(other, 0)])
    assert not np.allclose(x[2], y[2])  # inside the window: token 0 matters
    np.testing.assert_allclose(x[9], y[9], rtol=1e-5, atol=1e-5)  # outside: it does not


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K, T.F16])
def test_fast_backends_match_reference(tmp_path, qtype):
    from edgerun.backends.registry import make_backend

    path = write_model(tmp_path / "m.gguf", arch="qwen2", dim=256, ffn=512, n_heads=4, n_kv=2,
                       qtype=qtype)
    toks = list(np.random.default_rng(5).integers(0, VOCAB, 6))
    (ref,), _ = run(load(path), [(toks, 0)])
    for name in ("numba", "native"):
        try:
            be = make_backend(name, 2)
        except RuntimeError:
            continue  # native library not built
        (got,), _ = run(load(path, be), [(toks, 0)])
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err < 0.03, f"{name} {T(qtype).name}: relative error {err:.4f}"
        # the same top token, or a near tie in the reference (gap < 0.1; logits have std ~1.3 here)
        top_ref, top_got = np.argmax(ref, -1), np.argmax(got, -1)
        rows = np.arange(len(ref))
        gap = ref[rows, top_ref] - ref[rows, top_got]
        assert ((top_ref == top_got) | (gap < 0.1)).mean() >= 0.8, f"{name} {T(qtype).name}: gaps {gap}"


def test_missing_tensor_is_a_clear_error(tmp_path):
    p = write_model(tmp_path / "m.gguf", drop="blk.1.ffn_up.weight")
    with pytest.raises(ModelLoadError, match="missing tensor blk.1.ffn_up.weight"):
        load(p)


def test_wrong_shape_is_a_clear_error(tmp_path):
    p = write_model(tmp_path / "m.gguf", bad_shape="blk.0.attn_q.weight")
    with pytest.raises(ModelLoadError, match="blk.0.attn_q.weight has shape"):
        load(p)


def test_unknown_architecture(tmp_path):
    with pytest.raises(ModelLoadError, match="unsupported architecture 'gpt9'"):
        model_class("gpt9")


def test_tied_output_uses_embeddings(tmp_path):
    m = load(write_model(tmp_path / "t.gguf", tied=True))
    assert m.output is m.tok_embd


@pytest.mark.parametrize("one_call", [True, False])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_native_fused_blocks_match_reference(tmp_path, arch, one_call):
    """The native layers over a scattered paged cache, prefill + decode: all layers in one native
    call, or numpy attention with one native call per FFN block (the hybrid runner's CPU FFN)."""
    from edgerun.backends.registry import make_backend

    try:
        be = make_backend("native", 2)
    except RuntimeError:
        pytest.skip("native library not built")
    if not one_call:
        be = native_without("run_step", "run_layers")
    path = write_model(tmp_path / "m.gguf", arch=arch, dim=256, ffn=512, n_heads=4, n_kv=2,
                       qtype=T.Q8_0, window=3)
    toks = list(np.random.default_rng(6).integers(0, VOCAB, 9))
    tables = [np.array([33, 2, 50, 7])]
    (ref,), _ = run(load(path), [(toks, 0)], tables=tables)
    m = load(path, be)
    (first,), kv = run(m, [(toks[:5], 0)], tables=tables)
    got = [first]
    for p in range(5, 9):
        (step,), kv = run(m, [([toks[p]], p)], kv=kv, tables=tables)
        got.append(step)
    got = np.concatenate(got)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 0.03, f"{arch}: relative error {err:.4f}"


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_native_one_call_step_equals_layer_call(tmp_path, arch):
    """The whole step in one native call (embedding, layers, final norm, head) gives the logits of
    the layer-stack call with the embedding, norm and head done from Python: gemma's embedding
    scale and tied head included, two sequences with all and with last-token logits."""
    from edgerun.backends.registry import make_backend

    try:
        one = make_backend("native", 2)
    except RuntimeError:
        pytest.skip("native library not built")
    split = native_without("run_step")
    path = write_model(tmp_path / "m.gguf", arch=arch, dim=256, ffn=512, n_heads=4, n_kv=2, qtype=T.Q8_0,
                       tied=arch == "gemma3")
    rng = np.random.default_rng(9)
    a, b = list(rng.integers(0, VOCAB, 7)), list(rng.integers(0, VOCAB, 4))
    outs = []
    for be in (one, split):
        m = load(path, be)
        (pa, pb), kv = run(m, [(a, 0), (b, 0)])
        (da, db), _ = run(m, [([a[0]], 7), ([b[0]], 4)], kv=kv, want_all=False)
        outs.append(np.concatenate([pa, pb, np.atleast_2d(da), np.atleast_2d(db)]))
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5 * np.abs(outs[1]).max())


@pytest.fixture(params=["best", "avx2"])
def native_isa(request):
    """The native kernels at the best instruction set, then forced down to AVX2."""
    from edgerun.backends import native as nv

    if not nv.available():
        pytest.skip("native library not built")
    if request.param != "best" and nv.set_isa(request.param) != request.param:
        nv.set_isa(None)
        pytest.skip(f"{request.param} is not available here")
    yield request.param
    nv.set_isa(None)


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize(("n_heads", "n_kv", "hd"), [(4, 2, 64), (4, 2, 128), (2, 1, 256), (6, 2, 48)])
def test_native_attention_long_context_batched(tmp_path, n_heads, n_kv, hd, native_isa, kv_type):
    """The native attention past its 16- and 32-position blocks, for the head sizes it has SIMD code
    for (AVX-512: 64, 128, 256; AVX2: 64, 128; others take the generic path), with two sequences of
    different lengths in one batch, prefill then batched decode; one KV head (256) splits the query
    heads over the threads.

    Held against the same native matmuls with the numpy attention (only the attention differs) and,
    more loosely, against the float reference (8-bit activations differ too). With a half-precision
    cache the two paths round slightly different K and V values to halves, so they differ more
    (up to 1.2% on these random models, against 0.6% with floats)."""
    from edgerun.backends.registry import make_backend

    try:
        fused = make_backend("native", 2)
    except RuntimeError:
        pytest.skip("native library not built")
    unfused = native_without("run_step", "run_layers")  # numpy attention over native matmuls
    path = write_model(tmp_path / "m.gguf", arch="qwen2", dim=n_heads * hd, ffn=256, n_heads=n_heads,
                       n_kv=n_kv, qtype=T.Q8_0)
    rng = np.random.default_rng(7)
    a, b = list(rng.integers(0, VOCAB, 37)), list(rng.integers(0, VOCAB, 21))
    outs = []
    for m in (load(path), load(path, unfused), load(path, fused)):
        (pa, pb), kv = run(m, [(a[:35], 0), (b[:19], 0)], kv_type=kv_type)
        (da, db), kv = run(m, [([a[35]], 35), ([b[19]], 19)], kv=kv)
        (ea, eb), _ = run(m, [([a[36]], 36), ([b[20]], 20)], kv=kv)
        outs.append(np.concatenate([pa, pb, da, db, ea, eb]))
    ref, plain, got = outs

    def rel(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.linalg.norm(x - y) / np.linalg.norm(y))

    tol = 0.01 if kv_type == "f32" else 0.025
    assert rel(got, plain) < tol, f"hd {hd}: fused vs numpy attention {rel(got, plain):.4f}"
    assert (np.argmax(got, -1) == np.argmax(plain, -1)).mean() >= 0.95
    assert rel(got, ref) < 0.05, f"hd {hd}: fused vs float reference {rel(got, ref):.4f}"


def test_kv_cache_types(tmp_path):
    """f16 (default) halves the cache against f32; the reference backend over either gives nearly the
    same logits; an unknown type is a clear error."""
    from edgerun.runtime.runner import Runner, SeqInput
    from tests.synth import bench_gpu_module

    bench = bench_gpu_module()  # its synthetic files carry a tokenizer, which a Runner needs
    shape = bench.Shape("kv", "qwen2", 2, 128, 256, 4, 2, 600, qkv_bias=True, tied=True, ctx=256)
    path = bench.write_synthetic_gguf(tmp_path / "m.gguf", shape, qtype=8, seed=1, gain=8.0, exact=True)
    toks = np.random.default_rng(8).integers(3, 600, 12).astype(np.int32)
    out, sizes = {}, {}
    for kv_type in ("f32", "f16"):
        r = Runner(path, n_ctx=64, n_threads=1, backend="reference", kv_type=kv_type)
        assert r.kv.k[0].dtype == (np.float16 if kv_type == "f16" else np.float32)
        sizes[kv_type] = r.kv.nbytes
        (out[kv_type],) = r.forward([SeqInput(toks, 0, np.arange(r.num_blocks, dtype=np.int32), True)])
    assert sizes["f16"] * 2 == sizes["f32"]
    assert Runner(path, n_ctx=64, n_threads=1, backend="reference").kv.k[0].dtype == np.float16
    err = np.linalg.norm(out["f16"] - out["f32"]) / np.linalg.norm(out["f32"])
    assert 0 < err < 2e-3, err
    with pytest.raises(ValueError, match="unknown KV cache type 'q8'"):
        Runner(path, n_ctx=64, n_threads=1, backend="reference", kv_type="q8")
