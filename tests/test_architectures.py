"""Each architecture against llama.cpp on the same synthetic file: logits at every position, greedy.

The files (tests/synth_arch.py) carry the family's real tensor names, shapes and metadata with
random weights. With F32 weights both sides compute in floats, so the logits agree to ~1e-3 and a
wrong detail (no QK-norm, wrong expert weighting, RoPE factors ignored) shows as 0.09-0.45; with
Q8_0 weights the two activation quantizations differ, hence the looser bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from edgerun.models.base import ModelLoadError
from edgerun.runtime.runner import Runner, SeqInput
from tests.synth_arch import ArchSpec, write_arch_model

llama_cpp = pytest.importorskip("llama_cpp")

SPECS = [
    pytest.param(ArchSpec("llama"), id="llama"),
    pytest.param(ArchSpec("llama", rope_freqs=True), id="llama3.1-rope-freqs"),
    pytest.param(ArchSpec("llama", n_expert=4, n_expert_used=2), id="mixtral-moe"),
    pytest.param(ArchSpec("qwen3"), id="qwen3"),
    pytest.param(ArchSpec("qwen3moe", n_expert=4, n_expert_used=2, expert_ffn=64), id="qwen3moe"),
    pytest.param(ArchSpec("qwen2moe", n_expert=4, n_expert_used=2, expert_ffn=64, shared_expert_ffn=96),
                 id="qwen2moe-shared-expert"),
    pytest.param(ArchSpec("phi3"), id="phi3"),
    # 7 layers: the 6th is global, the others slide over 8 positions (the test runs 40)
    pytest.param(ArchSpec("gemma3", n_layers=7, head_dim=64, sliding_window=8), id="gemma3"),
]
TOLERANCE = {T.F32: 5e-3, T.Q8_0: 0.06}


def _logits_llamacpp(path: Path, ids: list[int]) -> np.ndarray:
    ll = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    try:
        ll.eval(ids)
        return np.array(ll.scores[: len(ids)], dtype=np.float32)
    finally:
        ll.close()


def _logits_edgerun(path: Path, ids: list[int], backend: str) -> np.ndarray:
    r = Runner(path, n_ctx=128, n_threads=2, backend=backend, kv_type="f32")
    # a prefill of the first part, then the rest one token at a time (decode path)
    cut = len(ids) - 4
    first = r.forward([SeqInput(np.array(ids[:cut], np.int32), 0, r.contiguous_table(len(ids)), True)])[0]
    rows = [first]
    table = r.contiguous_table(len(ids))
    for p in range(cut, len(ids)):
        rows.append(r.forward([SeqInput(np.array([ids[p]], np.int32), p, table)])[0][None])
    return np.concatenate(rows)


@pytest.mark.parametrize("qtype", [pytest.param(T.F32, id="f32"), pytest.param(T.Q8_0, id="q8_0")])
@pytest.mark.parametrize("spec", SPECS)
def test_logits_match_llamacpp(tmp_path, spec: ArchSpec, qtype: int):
    path = write_arch_model(tmp_path / f"{spec.arch}.gguf", spec, qtype=qtype, seed=3)
    ids = [int(i) for i in np.random.default_rng(0).integers(3, spec.vocab, 40)]
    ref = _logits_llamacpp(path, ids)
    ours = _logits_edgerun(path, ids, "native")
    # relative to the logits' range: gemma's are ~25x larger (embeddings scaled by sqrt(dim))
    diff = float(np.abs(ours - ref).max()) / max(1.0, float(np.abs(ref).max()) / 3)
    assert diff < TOLERANCE[qtype], f"max logit difference {diff:.4f}"
    if qtype == T.F32:
        np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("spec", [SPECS[2], SPECS[4]])
def test_moe_other_backends_match_native(tmp_path, spec, backend):
    path = write_arch_model(tmp_path / "m.gguf", spec, qtype=T.Q8_0, seed=5)
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 300, 24)]
    a = _logits_edgerun(path, ids, "native")
    b = _logits_edgerun(path, ids, backend)
    assert float(np.abs(a - b).max()) < 0.06


def test_moe_reads_only_chosen_experts(tmp_path, monkeypatch):
    """A decode step multiplies by the router and by exactly n_used experts per layer."""
    spec = ArchSpec("qwen3moe", n_expert=8, n_expert_used=2, expert_ffn=64)
    path = write_arch_model(tmp_path / "m.gguf", spec, qtype=T.Q8_0)
    r = Runner(path, n_ctx=64, n_threads=1, backend="reference")
    seen: list[str] = []
    orig = r.backend.matmul

    def spy(w, x, *a, **k):
        seen.append(w.name)
        return orig(w, x, *a, **k)

    monkeypatch.setattr(r.backend, "matmul", spy)
    r.forward([SeqInput(np.array([5], np.int32), 0, r.contiguous_table(1))])
    experts = [n for n in seen if "_exps" in n]
    assert len(experts) == spec.n_layers * spec.n_expert_used * 3  # gate, up, down per chosen expert


def test_unsupported_rope_scaling_is_refused(tmp_path):
    spec = ArchSpec("llama", extra_kv={"llama.rope.scaling.type": "yarn"})
    path = write_arch_model(tmp_path / "m.gguf", spec)
    with pytest.raises(ModelLoadError, match="yarn"):
        Runner(path, n_ctx=64, n_threads=1)


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[4]])
def test_gpu_placement_refuses_what_its_kernels_lack(tmp_path, monkeypatch, spec):
    """MoE layers and RoPE factors run on the CPU only: an explicit GPU placement is refused with
    the reason, `auto` falls back to the CPU (through the emulated device, as if a GPU were there)."""
    from edgerun.runtime.factory import make_runner

    monkeypatch.setenv("EDGERUN_CUDA", "emulate")
    path = write_arch_model(tmp_path / "m.gguf", spec)
    with pytest.raises(ValueError, match="not supported on the GPU"):
        make_runner(path, placement="hybrid", vram_bytes=8 << 30, n_ctx=64)
    r = make_runner(path, placement="auto", vram_bytes=8 << 30, n_ctx=64)
    assert type(r).__name__ == "Runner"
