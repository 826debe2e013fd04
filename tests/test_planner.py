"""Placement planner and `edgerun plan`: budgets, modes, overrides, KV bytes, JSON output."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgerun.cli import main
from edgerun.quant.gguf_file import GGUFFile
from edgerun.runtime.devices import GPUInfo, cuda_order, pci_key, probe_gpus
from edgerun.runtime.planner import (
    CPU,
    CUBLAS_WORKSPACE,
    DEQUANT_SCRATCH,
    GPU,
    MIB,
    RESERVE_FIXED,
    PlanError,
    dequant_scratch,
    gpu_spec_for,
    kv_bytes,
    parse_override,
    plan_for_file,
    plan_placement,
    reserve_bytes,
)
from tests.synth import bench_gpu_module


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama with tiny dims, written with gguf.GGUFWriter."""
    bench = bench_gpu_module()
    return bench.write_synthetic_gguf(tmp_path_factory.mktemp("plan") / "tiny.gguf", bench.SHAPES["tiny"])


# A synthetic tensor table with round sizes: 4 layers, attention 10 MiB, FFN 30 MiB per layer.
L, KVH, HD = 4, 2, 64
ATTN = {"attn_norm.weight": 1, "attn_q.weight": 4 * MIB, "attn_k.weight": 2 * MIB,
        "attn_v.weight": 2 * MIB, "attn_output.weight": 2 * MIB - 1}
FFN = {"ffn_norm.weight": 1, "ffn_gate.weight": 10 * MIB, "ffn_up.weight": 10 * MIB,
       "ffn_down.weight": 10 * MIB - 1}


def table(tied: bool = False) -> dict[str, SimpleNamespace]:
    t = {"token_embd.weight": SimpleNamespace(nbytes=50 * MIB)}
    for i in range(L):
        for k, v in (ATTN | FFN).items():
            t[f"blk.{i}.{k}"] = SimpleNamespace(nbytes=v)
    t["output_norm.weight"] = SimpleNamespace(nbytes=1)
    if not tied:
        t["output.weight"] = SimpleNamespace(nbytes=40 * MIB)
    return t


CTX = 1024
KV_LAYER = kv_bytes(CTX, 1, 1, KVH, HD)  # 1 MiB
ATTN_LAYER = 10 * MIB


def vram_for(usable: int) -> int:
    """Free VRAM whose usable part (after the reserve) is at least ``usable``."""
    v = math.ceil((usable + RESERVE_FIXED + DEQUANT_SCRATCH + CUBLAS_WORKSPACE) / 0.95) + 1
    assert v - reserve_bytes(v) >= usable
    return v


CPU_SPEED = {"read_gbs": 20.0, "gemm_gflops": 200.0}  # fixed, so that predictions are deterministic


def plan(vram: int, **kw):
    kw.setdefault("cpu", CPU_SPEED)
    return plan_placement(table(kw.pop("tied", False)), L, KVH, HD, ctx=CTX, vram_bytes=vram, **kw)


def test_kv_bytes_formula() -> None:
    assert kv_bytes(100, 3, 2, 2, 16) == 100 * 3 * 2 * 2 * 2 * 16 * 2  # f16 by default
    assert kv_bytes(100, 3, 2, 2, 16, bytes_per_elem=4) == 100 * 3 * 2 * 2 * 2 * 16 * 4
    p = plan_placement(table(), L, KVH, HD, ctx=300, batch=2, vram_bytes=0)
    assert p.kv_cache["bytes"] == kv_bytes(300, 2, L, KVH, HD)


def test_kv_bytes_use_each_devices_element_size() -> None:
    # GPU cache f16; a runner with kv_type f32 keeps its CPU layers in f32
    p = plan(vram_for(2 * (ATTN_LAYER + KV_LAYER) + MIB), kv_bytes_per_elem=4)
    assert p.kv_devices == [GPU, GPU, CPU, CPU]
    kv = p.kv_cache
    assert kv["gpu_bytes"] == 2 * kv_bytes(CTX, 1, 1, KVH, HD, 2)
    assert kv["cpu_bytes"] == 2 * kv_bytes(CTX, 1, 1, KVH, HD, 4)
    assert p.to_dict()["kv_cache"]["bytes"] == kv["gpu_bytes"] + kv["cpu_bytes"]


def test_reserve_covers_dequant_scratch_and_cublas_workspace() -> None:
    v = 24 << 30
    assert reserve_bytes(v) == int(v * 0.05) + RESERVE_FIXED + DEQUANT_SCRATCH + CUBLAS_WORKSPACE
    assert reserve_bytes(v, scratch=0) == int(v * 0.05) + RESERVE_FIXED + CUBLAS_WORKSPACE
    assert reserve_bytes(100 * MIB) == 100 * MIB
    # with real shapes the scratch is the largest matrix in f32, capped
    shaped = {"a": SimpleNamespace(nbytes=1, shape=(64, 1000)), "b": SimpleNamespace(nbytes=1, shape=(64,))}
    assert dequant_scratch(shaped) == 4 * 64 * 1000
    assert dequant_scratch({"e": SimpleNamespace(nbytes=1, shape=(4096, 128256))}) == DEQUANT_SCRATCH


def test_budget_zero_is_all_cpu() -> None:
    p = plan(0)
    assert not p.uses_gpu
    assert all(t.device == CPU for t in p.tensors.values())
    assert p.kv_cache == {"device": CPU, "bytes": L * KV_LAYER, "gpu_bytes": 0, "cpu_bytes": L * KV_LAYER}
    assert p.totals == {CPU: sum(t.nbytes for t in table().values()) + L * KV_LAYER, GPU: 0}


def test_tight_budget_places_some_attention() -> None:
    p = plan(vram_for(2 * (ATTN_LAYER + KV_LAYER) + MIB))
    assert [p.layers[i]["attn"] for i in range(L)] == [GPU, GPU, CPU, CPU]
    assert all(p.layers[i]["ffn"] == CPU for i in range(L))
    assert p.kv_devices == [GPU, GPU, CPU, CPU]
    kv = p.kv_cache
    assert kv["device"] == "split" and kv["gpu_bytes"] == 2 * KV_LAYER
    assert p.device_of("output.weight") == CPU and p.head_device == CPU
    assert p.totals[GPU] == 2 * (ATTN_LAYER + KV_LAYER)
    assert any("2 of 4" in n for n in p.notes)


def test_ample_budget_moves_everything_but_embeddings() -> None:
    p = plan(vram_for(10 << 30))
    assert all(d == {"attn": GPU, "ffn": GPU} for d in p.layers.values())
    assert p.kv_cache["device"] == GPU
    assert p.device_of("output.weight") == GPU and p.head_device == GPU
    assert p.device_of("output_norm.weight") == GPU
    assert p.device_of("token_embd.weight") == CPU
    assert p.totals[CPU] == 50 * MIB


def test_leftover_goes_to_head_then_whole_ffn_blocks() -> None:
    attn_all = L * (ATTN_LAYER + KV_LAYER)
    p = plan(vram_for(attn_all + 40 * MIB + 1 + 30 * MIB + MIB))
    assert p.head_device == GPU
    assert [p.layers[i]["ffn"] for i in range(L)] == [GPU, CPU, CPU, CPU]  # never half a block


def test_tied_head_gets_a_gpu_copy() -> None:
    p = plan(vram_for(10 << 30), tied=True)
    assert p.head_tensor == "token_embd.weight" and p.head_device == GPU
    assert p.device_of("token_embd.weight") == CPU
    assert p.head_copy_bytes == 50 * MIB


def test_modes() -> None:
    big = vram_for(10 << 30)
    assert not plan(big, mode="cpu").uses_gpu
    h = plan(big, mode="hybrid")
    assert all(d == {"attn": GPU, "ffn": CPU} for d in h.layers.values())
    assert h.head_device == GPU and h.kv_cache["device"] == GPU  # the head goes on the GPU when it fits
    g = plan(big, mode="gpu")
    assert all(d == {"attn": GPU, "ffn": GPU} for d in g.layers.values()) and g.head_device == GPU
    # gpu mode fills whole layers (like -ngl), auto fills attention first
    one_layer = vram_for(ATTN_LAYER + 30 * MIB + KV_LAYER + MIB)
    g = plan(one_layer, mode="gpu")
    assert g.layers[0] == {"attn": GPU, "ffn": GPU} and g.layers[1] == {"attn": CPU, "ffn": CPU}
    a = plan(one_layer, mode="auto", by_speed=False)
    assert [a.layers[i]["attn"] for i in range(L)] == [GPU, GPU, GPU, CPU]
    # by predicted speed, auto keeps the whole-layer layout: it leaves fewer bytes for the CPU to read
    a = plan(one_layer, mode="auto")
    assert a.layers == g.layers and a.mode == "auto" and any("gpu layout is predicted fastest" in n
                                                             for n in a.notes)
    assert plan(0, mode="gpu").notes
    with pytest.raises(PlanError):
        plan(big, mode="tpu")


def test_vram_budget_caps_free_vram() -> None:
    p = plan(vram_for(10 << 30), vram_budget=vram_for(2 * (ATTN_LAYER + KV_LAYER) + MIB))
    assert [p.layers[i]["attn"] for i in range(L)] == [GPU, GPU, CPU, CPU]


def test_overrides() -> None:
    big = vram_for(10 << 30)
    p = plan(big, overrides=[r"ffn_.*=cpu"])
    assert all(d == {"attn": GPU, "ffn": CPU} for d in p.layers.values())
    p = plan(big, overrides=[r"blk\.1\.attn_q\.=cpu"])
    assert p.layers[1]["attn"] == "mixed" and p.kv_devices[1] == CPU  # a split layer runs on the CPU
    p = plan(big, overrides=[r"blk\.1\.attn_.*=cpu"])
    assert p.layers[1]["attn"] == CPU and p.kv_devices[1] == CPU and p.kv_devices[0] == GPU
    # to the GPU beats a zero budget, and the last match wins
    p = plan(0, overrides=[r"ffn_=gpu", r"ffn_down=cpu"])
    assert p.device_of("blk.0.ffn_up.weight") == GPU
    assert p.device_of("blk.0.ffn_down.weight") == CPU
    assert p.layers[0]["ffn"] == "mixed" and p.uses_gpu
    assert any("over the" in n for n in p.notes)
    p = plan(0, overrides=[("output\\.weight", "gpu")])
    assert p.head_device == GPU
    for bad in ["nodevice", "x=tpu", "(=gpu", "=gpu"]:
        with pytest.raises(PlanError):
            parse_override(bad)
    assert parse_override("a=b=CUDA0") == ("a=b", GPU)


def test_plan_for_file_tiny(tiny_gguf: Path) -> None:
    with GGUFFile(tiny_gguf) as gf:
        # mode "gpu": `auto` picks the layout predicted fastest, which for a tiny model depends on this
        # machine's measured CPU speed against the per-layer PCIe cost
        p = plan_for_file(gf, ctx=256, batch=2, vram_bytes=1 << 30, mode="gpu")
        assert set(p.tensors) == set(gf.tensors)
        assert p.kv_cache["bytes"] == kv_bytes(256, 2, 2, 2, 16)
        assert all(d == {"attn": GPU, "ffn": GPU} for d in p.layers.values())


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json_lists_every_tensor(tiny_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run_cli(capsys, "plan", "-m", str(tiny_gguf), "--vram-gb", "1", "--ctx", "128", "--json",
                          "--placement", "gpu")  # not auto: see test_plan_for_file_tiny
    assert rc == 0
    d = json.loads(out)
    with GGUFFile(tiny_gguf) as gf:
        assert [t["name"] for t in d["tensors"]] == list(gf.tensors)
        assert all(t["bytes"] == gf.tensors[t["name"]].nbytes for t in d["tensors"])
        weights = sum(t.nbytes for t in gf.tensors.values())
    assert d["kv_cache"]["device"] == GPU and d["kv_cache"]["bytes"] == kv_bytes(128, 1, 2, 2, 16)
    assert sum(d["totals"].values()) == weights + d["kv_cache"]["bytes"] + (
        0 if d["head"]["tensor"] == "output.weight" else
        next(t["bytes"] for t in d["tensors"] if t["name"] == d["head"]["tensor"]))
    rc, out, _ = _run_cli(capsys, "plan", "-m", str(tiny_gguf), "--vram-gb", "0", "--json")
    assert rc == 0 and json.loads(out)["totals"]["gpu"] == 0
    rc, out, _ = _run_cli(capsys, "plan", "-m", str(tiny_gguf), "--vram-gb", "1",
                          "--override", "ffn_.*=cpu", "--placement", "gpu", "--json")
    d = json.loads(out)
    assert all(t["device"] == CPU for t in d["tensors"] if "ffn_" in t["name"])
    assert d["layers"]["0"] == {"attn": GPU, "ffn": CPU}


def test_cli_table(tiny_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run_cli(capsys, "plan", "-m", str(tiny_gguf), "--vram-gb", "1", "--placement", "hybrid")
    assert rc == 0
    assert "layer" in out and "KV cache" in out and "total: gpu" in out
    assert out.count(" gpu    cpu ") == 2  # two layers: attention on the GPU, FFN on the CPU


@pytest.mark.parametrize("argv", [
    ["--ctx", "0"], ["--vram-gb", "-1"], ["--vram-gb", "lots"], ["--placement", "tpu"],
    ["--override", "x=tpu"], ["--override", "(=gpu"], ["--batch", "0"], ["--gpu", "tpu9000"],
])
def test_cli_bad_values(tiny_gguf: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    try:
        rc = main(["plan", "-m", str(tiny_gguf), *argv])
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("edgerun: error:") and err.count("\n") == 1


def test_cli_missing_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = _run_cli(capsys, "plan", "-m", str(tmp_path / "nope.gguf"))
    assert rc == 2 and "not found" in err


@pytest.mark.real
def test_cli_json_real_qwen(qwen05_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run_cli(capsys, "plan", "-m", str(qwen05_path), "--vram-gb", "0.6", "--json")
    assert rc == 0
    d = json.loads(out)
    with GGUFFile(qwen05_path) as gf:
        assert {t["name"] for t in d["tensors"]} == set(gf.tensors)
        assert len(d["tensors"]) == len(gf.tensors)
    assert d["kv_cache"]["bytes"] == kv_bytes(4096, 1, 24, 2, 64)
    layers = d["layers"]
    assert layers["0"]["attn"] == GPU and layers["23"]["attn"] == CPU  # a tight budget
    assert d["predicted"]["decode_tok_s"] == max(v["decode_tok_s"] for v in d["candidates"].values())


# ----------------------------------------------------------------------------- NVML and CUDA agree on the GPU
# probe_gpus lists NVML's GPUs in CUDA's order, so the plan reads the VRAM of CUDA device 0.

A = GPUInfo(0, "RTX 3090", 24 << 30, 20 << 30, 0, "GPU-aaaa1111-0000", "00000000:17:00.0")
B = GPUInfo(1, "RTX 4090", 24 << 30, 23 << 30, 0, "GPU-bbbb2222-0000", "00000000:65:00.0")
C = GPUInfo(2, "RTX 4060", 8 << 30, 8 << 30, 0, "GPU-cccc3333-0000", "00000000:B3:00.0")


def test_pci_keys_compare_across_spellings() -> None:
    assert pci_key("00000000:65:00.0") == pci_key("0000:65:00.0") == (0, 0x65, 0)
    assert pci_key("garbage") is None


def test_cuda_order_by_bus_id() -> None:
    # CUDA's default order is fastest first: the 4090 is CUDA device 0 although NVML lists it second
    assert cuda_order([A, B, C], ["0000:65:00.0", "0000:17:00.0", "0000:B3:00.0"]) == [B, A, C]
    # CUDA_VISIBLE_DEVICES hid two GPUs: CUDA reports one device
    assert cuda_order([A, B, C], ["00000000:B3:00.0"]) == [C]


def test_cuda_order_from_visible_devices() -> None:
    assert cuda_order([A, B, C], None, None) == [A, B, C]
    assert cuda_order([A, B, C], None, "2,0") == [C, A]
    assert cuda_order([A, B, C], None, "GPU-bbbb") == [B]
    assert cuda_order([A, B, C], None, "bbbb2222,1") == [B]  # a repeated GPU ends the list, as in CUDA
    assert cuda_order([A, B, C], None, "1,7,0") == [B]  # parsing stops at the first invalid entry
    assert cuda_order([A, B, C], None, "") == []


def test_emulated_device_is_probed(monkeypatch) -> None:
    monkeypatch.setenv("EDGERUN_CUDA", "emulate")
    monkeypatch.setenv("EDGERUN_CUDA_EMU_VRAM_GB", "12")
    (g,) = probe_gpus()
    assert g.vram_total == 12 << 30 and g.uuid.startswith("GPU-")



# ----------------------------------------------------------------------------- predicted speed


def test_gpu_table_lookup() -> None:
    assert gpu_spec_for("NVIDIA GeForce RTX 4090").name == "RTX 4090"
    assert gpu_spec_for("NVIDIA GeForce RTX 4060 Laptop GPU").name == "RTX 4060 Laptop"
    assert gpu_spec_for("NVIDIA H200").mem_gbs > gpu_spec_for("NVIDIA H100 80GB HBM3").mem_gbs
    assert gpu_spec_for("NVIDIA A100-SXM4-80GB").name == "A100"
    assert gpu_spec_for("something else").name == "RTX 4090"


def test_prediction_counts_bytes_per_device() -> None:
    p = plan(vram_for(2 * (ATTN_LAYER + KV_LAYER) + MIB), mode="hybrid")
    pr = p.predicted
    cpu_weights = 2 * ATTN_LAYER + L * 30 * MIB - L + 40 * MIB + 1  # FFN of every layer, 2 attentions, head
    kv_tok = KV_LAYER / CTX
    assert pr["cpu_bytes_per_token"] == pytest.approx(cpu_weights + 2 * 256 * kv_tok)
    assert pr["gpu_bytes_per_token"] == pytest.approx(2 * ATTN_LAYER + 2 * 256 * kv_tok)
    t = pr["cpu_bytes_per_token"] / (20e9 * 0.85) + pr["gpu_bytes_per_token"] / (1008e9 * 0.8)
    t += 2 * 10e-6 + 2 * 20e-6
    assert pr["decode_tok_s"] == pytest.approx(1 / t)
    assert pr["pcie_crossings"] == 2
    assert p.to_dict()["predicted"]["gpu"] == "RTX 4090"
    # no GPU at all: the CPU-only prediction
    c = plan(0).predicted
    assert c["gpu_bytes_per_token"] == 0
    assert c["decode_tok_s"] == pytest.approx(20e9 * 0.85 / c["cpu_bytes_per_token"])


def test_auto_picks_the_fastest_prediction() -> None:
    one_layer = vram_for(ATTN_LAYER + 30 * MIB + KV_LAYER + MIB)
    for vram in (vram_for(2 * (ATTN_LAYER + KV_LAYER) + MIB), one_layer, vram_for(10 << 30)):
        a = plan(vram)
        best = max(a.candidates.values(), key=lambda v: v["decode_tok_s"])
        assert a.predicted["decode_tok_s"] == best["decode_tok_s"]
        assert set(a.candidates) == {"auto (attention first)", "gpu", "hybrid", "cpu"}
    # a faster GPU never predicts slower
    slow = plan(vram_for(10 << 30), gpu_name="4060 laptop").predicted["decode_tok_s"]
    fast = plan(vram_for(10 << 30), gpu_name="h200").predicted["decode_tok_s"]
    assert fast > slow


def test_cpu_speed_is_measured_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgerun.runtime.planner as planner

    monkeypatch.setenv("EDGERUN_CACHE_DIR", str(tmp_path))
    calls = []
    real = planner.measure_cpu

    def counted(threads: int, mb: int = 256) -> dict[str, float]:
        calls.append(threads)
        return real(threads, mb=16)

    monkeypatch.setattr(planner, "measure_cpu", counted)
    a = planner.cpu_speed(1)
    b = planner.cpu_speed(1)
    assert a == b and calls == [1] and a["read_gbs"] > 0 and a["gemm_gflops"] > 0
    assert (tmp_path / "cpu_speed.json").is_file()
