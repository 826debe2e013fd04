#!/usr/bin/env python3
"""GPU benchmark for a machine with an NVIDIA GPU and no network (see ../shared/GPU.md).

Writes synthetic GGUF files of real shapes (random blocks with sane scales; decode speed does not
depend on the values), checks the hybrid and GPU runners against the CPU backend, then times
prefill and decode of edgerun cpu / hybrid / gpu and of llama.cpp built with CUDA (``llama-bench``
with ``-ngl 99 -ot "ffn_.*=CPU"`` and ``-ngl 99``) in the same run, and prints one table with the
ratios and the CPU FFN phase's achieved bandwidth over the measured CPU read bandwidth.

    python scripts/bench_gpu.py --run-tests --build-llama [--shapes llama8b,70b --max-layers-70b 40]
    python scripts/bench_gpu.py --llama-bench /path/to/llama-bench   # an existing build
    python scripts/bench_gpu.py --emulated-overhead   # no GPU: host ms per decoded token, emulated

``--run-tests`` first runs tests/test_cuda_backend.py and tests/test_cuda_emu.py with real CuPy (the
same tests CI runs on the emulated device). ``--build-llama`` builds ``llama-bench`` with CUDA from
the llama-cpp-python sdist in pip's cache (``pip download --no-binary :all: --no-deps
llama-cpp-python``), as ../shared/GPU.md describes (about 5 minutes on 16 cores).

The synthetic-model writer (:func:`write_synthetic_gguf`) is also used by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Shape:
    """Transformer geometry of a synthetic model."""

    name: str
    arch: str
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    qkv_bias: bool = False
    tied: bool = False
    rope_base: float = 10000.0
    ctx: int = 4096
    window: int = 0  # gemma3: sliding window of the local layers


SHAPES: dict[str, Shape] = {
    "qwen1.5b": Shape("Qwen2.5-1.5B", "qwen2", 28, 1536, 8960, 12, 2, 151936, qkv_bias=True, tied=True,
                      rope_base=1e6, ctx=32768),
    "llama8b": Shape("Llama-3-8B", "llama", 32, 4096, 14336, 32, 8, 128256, rope_base=5e5, ctx=8192),
    "70b": Shape("Llama-3-70B", "llama", 80, 8192, 28672, 64, 8, 128256, rope_base=5e5, ctx=8192),
    "tiny": Shape("tiny-llama", "llama", 2, 64, 128, 4, 2, 300, ctx=256),
}


def _random_blocks(rng: np.random.Generator, qtype: int, n: int, k: int, gain: float = 1.0) -> np.ndarray:
    """(n, row_bytes) uint8 of random blocks with sane scales times ``gain`` (float32 (n, k) for F32)."""
    from edgerun.quant.traits import TRAITS, row_bytes

    t = TRAITS[qtype]
    if t.name == "F32":
        return (rng.standard_normal((n, k), dtype=np.float32) * 0.05 * gain).astype(np.float32)
    if t.name == "F16":
        return (rng.standard_normal((n, k), dtype=np.float32) * 0.05 * gain).astype(np.float16).view(np.uint8)
    if t.name == "BF16":
        v = (rng.standard_normal((n, k), dtype=np.float32) * 0.05 * gain).view(np.uint32)
        return (v >> 16).astype(np.uint16).view(np.uint8).reshape(n, 2 * k)
    rb = row_bytes(qtype, k)
    raw = rng.integers(0, 256, size=(n, rb), dtype=np.uint8)
    blocks = raw.reshape(-1).view(t.dtype)
    scale = 0.05 / (16 if t.name.startswith(("Q4", "Q5")) else 64 if t.name == "Q6_K" else 128)
    if t.name in ("Q4_K", "Q5_K"):
        scale /= 32.0  # multiplied by 6-bit sub-block scales
    if t.name == "Q6_K":
        scale /= 64.0
    for f in ("d", "dmin", "m"):
        if f in t.dtype.names:
            blocks[f] = np.float16(scale * gain)
    return raw


def write_synthetic_gguf(path: str | os.PathLike, shape: Shape, qtype: int = 2, seed: int = 0,
                         norm_qtype: int = 0, head_qtype: int | None = None, gain: float = 1.0,
                         exact: bool = False) -> Path:
    """Write a runnable synthetic GGUF of ``shape`` (weights ``qtype``, norms F32) with an SPM vocab.

    ``gain`` scales every weight (tests use a large one so attention is peaked, not uniform).
    ``exact``: quantize zero-mean normal weights with the reference quantizers (slow; for tests)
    instead of writing random blocks (fast; real shapes for timing).

    Tensors are streamed to disk one at a time, so the file may be larger than RAM would like.
    """
    import gguf

    from edgerun.quant.traits import TRAITS

    rng = np.random.default_rng(seed)
    s = shape
    hd = s.dim // s.n_heads
    path = Path(path)
    w = gguf.GGUFWriter(str(path), s.arch)
    p = s.arch + "."
    w.add_uint32(p + "block_count", s.n_layers)
    w.add_uint32(p + "context_length", s.ctx)
    w.add_uint32(p + "embedding_length", s.dim)
    w.add_uint32(p + "feed_forward_length", s.ffn_dim)
    w.add_uint32(p + "attention.head_count", s.n_heads)
    w.add_uint32(p + "attention.head_count_kv", s.n_kv_heads)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(p + "rope.freq_base", s.rope_base)
    if s.arch == "gemma3":  # QK-norm, post-norms, sliding-window local layers
        w.add_uint32(p + "attention.key_length", hd)
        w.add_uint32(p + "attention.value_length", hd)
        w.add_uint32(p + "attention.sliding_window", s.window or 4)
    w.add_uint32("general.file_type", 2 if qtype == 2 else 0)
    # a SentencePiece-style vocabulary: unk, bos, eos, 256 byte tokens, then filler pieces
    n_fill = max(s.vocab - 259, 0)
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"\u2581t{i}" for i in range(n_fill)]
    toks = toks[: s.vocab]
    types = [2, 3, 3] + [6] * 256 + [1] * n_fill
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(n_fill)][: s.vocab - 259])
    w.add_token_types(types[: s.vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    specs: list[tuple[str, int, tuple[int, ...]]] = []  # name, qtype, (K, N) or (K,)
    head_q = qtype if head_qtype is None else head_qtype
    specs.append(("token_embd.weight", head_q, (s.dim, s.vocab)))
    for i in range(s.n_layers):
        b = f"blk.{i}."
        qd, kvd = s.n_heads * hd, s.n_kv_heads * hd
        specs += [(b + "attn_norm.weight", norm_qtype, (s.dim,)),
                  (b + "attn_q.weight", qtype, (s.dim, qd)),
                  (b + "attn_k.weight", qtype, (s.dim, kvd)),
                  (b + "attn_v.weight", qtype, (s.dim, kvd)),
                  (b + "attn_output.weight", qtype, (qd, s.dim)),
                  (b + "ffn_norm.weight", norm_qtype, (s.dim,)),
                  (b + "ffn_gate.weight", qtype, (s.dim, s.ffn_dim)),
                  (b + "ffn_up.weight", qtype, (s.dim, s.ffn_dim)),
                  (b + "ffn_down.weight", qtype, (s.ffn_dim, s.dim))]
        if s.qkv_bias:
            specs += [(b + "attn_q.bias", 0, (qd,)), (b + "attn_k.bias", 0, (kvd,)),
                      (b + "attn_v.bias", 0, (kvd,))]
        if s.arch == "gemma3":
            specs += [(b + "attn_q_norm.weight", norm_qtype, (hd,)),
                      (b + "attn_k_norm.weight", norm_qtype, (hd,)),
                      (b + "post_attention_norm.weight", norm_qtype, (s.dim,)),
                      (b + "post_ffw_norm.weight", norm_qtype, (s.dim,))]
    specs.append(("output_norm.weight", norm_qtype, (s.dim,)))
    if not s.tied:
        specs.append(("output.weight", head_q, (s.dim, s.vocab)))

    def make(name: str, qt: int, shp: tuple[int, ...]) -> np.ndarray:
        if len(shp) == 1:
            if name.endswith("norm.weight"):
                return (1.0 + 0.1 * rng.standard_normal(shp[0])).astype(np.float32)
            return (0.1 * rng.standard_normal(shp[0])).astype(np.float32)
        if exact and qt not in (0, 1, 30):
            from edgerun.quant.traits import quantize

            return quantize(rng.standard_normal((shp[1], shp[0])).astype(np.float32) * 0.05 * gain, qt)
        return _random_blocks(rng, qt, shp[1], shp[0], gain)

    for name, qt, shp in specs:
        t = TRAITS[qt]
        n_el = int(np.prod(shp))
        nbytes = n_el // t.block_size * t.type_size
        dt = np.float32 if qt == 0 else np.uint8
        if qt == 0:
            byte_shape = list(reversed(shp))
        else:
            byte_shape = list(reversed(shp[1:])) + [nbytes // max(int(np.prod(shp[1:])), 1)]
        w.add_tensor_info(name, byte_shape, np.dtype(dt), nbytes, raw_dtype=gguf.GGMLQuantizationType(qt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, qt, shp in specs:
        w.write_tensor_data(make(name, qt, shp))
    w.close()
    return path


# ----------------------------------------------------------------------------- measurements


def _make_runner() -> Any:
    """edgerun.runtime.factory.make_runner (imported late: the script's --help needs no edgerun)."""
    from edgerun.runtime.factory import make_runner

    return make_runner


def cpu_read_bandwidth(threads: int, gib: float = 1.0) -> float:
    """Measured CPU read bandwidth in GB/s (a parallel Numba reduction over a large array)."""
    import numba
    from numba import njit, prange

    @njit(parallel=True, cache=False)
    def _sum(a: np.ndarray) -> float:  # pragma: no cover - jitted
        s = 0.0
        for i in prange(a.size):
            s += a[i]
        return s

    numba.set_num_threads(threads)
    a = np.ones(int(gib * (1 << 30)) // 8, np.float64)
    _sum(a[:1024])
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _sum(a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


@dataclass
class Result:
    """One row of the table."""

    shape: str
    variant: str
    prefill_tps: float
    decode_tps: float
    note: str = ""
    ffn_gbps: float = float("nan")


def _time_edgerun(path: Path, placement: str, prompt: int, gen: int, threads: int,
                  vram_budget: int | None) -> tuple[float, float, float, dict[str, Any]]:
    """(prefill tok/s, decode tok/s, CPU FFN GB/s during decode, plan totals) of one placement."""
    make_runner = _make_runner()
    from edgerun.runtime.runner import SeqInput

    n_ctx = prompt + gen + 32
    r = make_runner(path, placement=placement, vram_budget=vram_budget, n_ctx=n_ctx, n_threads=threads,
                    num_blocks=-(-n_ctx // 16) + 1)
    plan = getattr(r, "plan", None)
    inner = r.model.model if hasattr(r.model, "gpu") else r.model
    ffn_time = [0.0]

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            y = fn(*a, **k)
            ffn_time[0] += time.perf_counter() - t0
            return y
        return wrapper

    # instance attributes: the classes stay untouched (fused native FFN or the numpy ffn_block)
    inner.ffn_block = timed(inner.ffn_block)
    if getattr(inner.backend, "ffn", None) is not None:
        inner.backend.ffn = timed(inner.backend.ffn)
    rng = np.random.default_rng(0)
    vocab = r.args.vocab_size
    table = r.contiguous_table(n_ctx - 16)
    warm = rng.integers(3, vocab, 16).astype(np.int32)
    r.forward([SeqInput(warm, 0, table)])  # compile / upload / warm-up
    toks = rng.integers(3, vocab, prompt).astype(np.int32)
    t0 = time.perf_counter()
    r.forward([SeqInput(toks, 0, table)])
    t_prefill = time.perf_counter() - t0
    ffn_time[0] = 0.0
    pos = prompt
    t0 = time.perf_counter()
    for _ in range(gen):
        r.forward([SeqInput(np.array([5], np.int32), pos, table)])
        pos += 1
    t_dec = time.perf_counter() - t0
    ffn_bytes = 0
    if plan is not None:
        ffn_bytes = sum(t.bytes for t in plan.tensors.values() if t.group == "ffn" and t.device == "cpu")
    else:
        with_gf = r.gguf
        ffn_bytes = sum(t.nbytes for n, t in with_gf.tensors.items() if ".ffn_" in n)
    gbps = ffn_bytes * gen / ffn_time[0] / 1e9 if ffn_time[0] > 0 and ffn_bytes else float("nan")
    totals = plan.totals if plan is not None else {"cpu": 0, "gpu": 0}
    return prompt / t_prefill, gen / t_dec, gbps, totals


def _llama_bench(binary: str, path: Path, prompt: int, gen: int, reps: int, threads: int,
                 extra: list[str]) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) from llama-bench's JSON output."""
    cmd = [binary, "-m", str(path), "-p", str(prompt), "-n", str(gen), "-r", str(reps), "-t", str(threads),
           "-o", "json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed: {out.stderr[-2000:]}")
    rows = json.loads(out.stdout)
    pp = next((float(x["avg_ts"]) for x in rows
               if int(x.get("n_prompt", 0)) > 0 and int(x.get("n_gen", 0)) == 0), float("nan"))
    tg = next((float(x["avg_ts"]) for x in rows
               if int(x.get("n_gen", 0)) > 0 and int(x.get("n_prompt", 0)) == 0), float("nan"))
    return pp, tg


def _check(path: Path, threads: int) -> str:
    """Max relative logit error of hybrid and gpu placements vs the CPU backend on a short prompt."""
    make_runner = _make_runner()
    from edgerun.runtime.runner import Runner, SeqInput

    toks = np.arange(3, 35, dtype=np.int32)
    cpu = Runner(path, n_ctx=128, n_threads=threads, num_blocks=16)
    want = cpu.forward([SeqInput(toks, 0, cpu.contiguous_table(len(toks)))])[0]
    msgs = []
    for placement in ("hybrid", "gpu"):
        r = make_runner(path, placement=placement, n_ctx=128, n_threads=threads, num_blocks=16)
        got = r.forward([SeqInput(toks, 0, r.contiguous_table(len(toks)))])[0]
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
        msgs.append(f"{placement} rel err {err:.2e} ({type(r).__name__})")
    return "; ".join(msgs)


def emulated_overhead(n_layers: int = 32, tokens: int = 16, placement: str = "gpu") -> dict[str, float]:
    """Host-side (Python + CuPy API) milliseconds per decoded token with CUDA graphs, on the emulated
    device (EDGERUN_CUDA=emulate) with a synthetic ``n_layers``-layer model: the main thread's CPU time
    per decode step minus the device's (running queued work), the emulator API's and the CPU FFN's,
    plus the emulator's API calls priced at CuPy's costs. The CPU FFN runs on other threads too:
    use the gpu placement for the figure."""
    os.environ["EDGERUN_CUDA"] = "emulate"
    from edgerun.backends import cuda_emu
    make_runner = _make_runner()
    from edgerun.runtime.runner import SeqInput

    work = Path(tempfile.gettempdir()) / "edgerun-bench"
    work.mkdir(parents=True, exist_ok=True)
    shape = Shape(f"overhead-{n_layers}l", "llama", n_layers, 256, 512, 4, 2, 512, ctx=512)
    path = work / f"overhead-{n_layers}l.gguf"
    if not path.is_file():
        write_synthetic_gguf(path, shape, qtype=2)
    r = make_runner(path, placement=placement, vram_bytes=8 << 30, n_ctx=256, num_blocks=20, overlap=False)
    hm = r.model
    ffn_s = [0.0]
    inner_ffn = hm.cpu_ffn

    def timed_ffn(ly: Any, x: np.ndarray) -> np.ndarray:
        t0 = time.thread_time()
        y = inner_ffn(ly, x)
        ffn_s[0] += time.thread_time() - t0
        return y

    hm.cpu_ffn = timed_ffn
    table = r.contiguous_table(200)
    r.forward([SeqInput(np.arange(3, 11, dtype=np.int32), 0, table)])
    pos = 8
    for _ in range(3):  # eager, then capture, then replay
        r.forward([SeqInput(np.array([5], np.int32), pos, table)])
        pos += 1
    assert hm.graphs and hm._graphs, "decode steps should replay CUDA graphs"
    cuda_emu.stats.reset()
    cuda_emu.stats.time_api = True  # split the host time into the emulator's API and edgerun's Python
    ffn_s[0] = 0.0
    t0 = time.thread_time()  # CPU time of this thread, so that a busy machine does not inflate it
    for _ in range(tokens):
        r.forward([SeqInput(np.array([5], np.int32), pos, table)])
        pos += 1
    wall = time.thread_time() - t0
    st = cuda_emu.stats
    # edgerun's Python plus the emulator's API calls (which stand in for CuPy's) per step
    host = wall - st.device_s - ffn_s[0]
    # the same calls priced at CuPy's measured costs (shared/GPU.md: RawKernel launch 9 us, graph replay
    # about 1 us per kernel); copies, syncs, views and allocations at 5, 5, 2 and 10 us
    cost = {"kernel_launch": 9e-6, "memcpy": 5e-6, "synchronize": 5e-6, "array_view": 2e-6, "array_op": 5e-6,
            "alloc": 10e-6, "kernel_launch_in_graphs": 1e-6, "array_attr": 0.1e-6}
    cupy = sum(cost.get(k, 0.0) * n for k, n in st.api_calls.items())
    return {"layers": n_layers, "placement": placement, "thread_cpu_ms": 1e3 * wall / tokens,
            "device_ms": 1e3 * st.device_s / tokens, "cpu_ffn_ms": 1e3 * ffn_s[0] / tokens,
            "host_ms": 1e3 * host / tokens, "emulator_api_ms": 1e3 * st.api_s / tokens,
            "edgerun_python_ms": 1e3 * (host - st.api_s) / tokens,
            "cupy_calls_at_cupy_cost_ms": 1e3 * cupy / tokens,
            "estimate_with_cupy_ms": 1e3 * (host - st.api_s + cupy) / tokens,
            "api_calls_per_token": {k: v / tokens for k, v in st.api_calls.items()}}


def run_gpu_tests() -> int:
    """The GPU tests with real CuPy (exit status of pytest)."""
    env = {k: v for k, v in os.environ.items() if k != "EDGERUN_CUDA"}
    tests = ["tests/test_cuda_backend.py", "tests/test_cuda_emu.py", "tests/test_cuda_compile.py"]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", *tests], cwd=ROOT, env=env).returncode


def build_llama_bench(work: Path, arch: str | None = None) -> str:
    """Build llama.cpp's llama-bench with CUDA from the llama-cpp-python sdist; its path."""
    import glob
    import tarfile

    out = work / "llama.cpp"
    binary = out / "build" / "bin" / "llama-bench"
    if binary.is_file():
        return str(binary)
    dl = work / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    if not glob.glob(str(dl / "llama_cpp_python-*.tar.gz")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        "--no-build-isolation", "-d", str(dl), "llama-cpp-python"], check=True)
    sdist = sorted(glob.glob(str(dl / "llama_cpp_python-*.tar.gz")))[-1]
    src = work / "sdist-src"
    if not src.is_dir():
        with tarfile.open(sdist) as tf:
            tf.extractall(src, filter="data")
    vendored = next(Path(p) for p in glob.glob(str(src / "*" / "vendor" / "llama.cpp")))
    if not out.is_dir():
        os.symlink(vendored, out)
    if arch is None:
        try:
            cc = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.split()[0]
            arch = cc.replace(".", "")
        except Exception:
            arch = "native"
    subprocess.run(["cmake", "-B", "build", "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
                    "-DGGML_CUDA_FA=OFF", "-DGGML_CUDA_NCCL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF",
                    "-DCMAKE_BUILD_TYPE=Release"], cwd=out, check=True)
    subprocess.run(["cmake", "--build", "build", "--target", "llama-bench", "-j", str(os.cpu_count() or 4)],
                   cwd=out, check=True)
    return str(binary)


def main(argv: list[str] | None = None) -> int:
    """Build the synthetic models, check, time every variant and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench",
                    help="path to llama-bench built with CUDA (llama.cpp rows skipped if absent)")
    ap.add_argument("--shapes", default="qwen1.5b,llama8b,70b", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "edgerun-bench"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-p", "--prompt", type=int, default=256)
    ap.add_argument("-n", "--gen", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=2)
    ap.add_argument("--qtype", default="Q4_0", help="weight type of the synthetic models")
    ap.add_argument("--vram-budget-gb", type=float, default=24.0, help="VRAM cap for the 70B-class shape")
    ap.add_argument("--max-layers-70b", type=int, default=0,
                    help="truncate the 70B shape to this many layers (0: all 80; disk and time permitting)")
    ap.add_argument("--variants", default="cpu,hybrid,gpu")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--run-tests", action="store_true", help="run the GPU tests with real CuPy first")
    ap.add_argument("--build-llama", action="store_true",
                    help="build llama-bench with CUDA from the llama-cpp-python sdist (pip download)")
    ap.add_argument("--emulated-overhead", action="store_true",
                    help="only measure the host overhead per decoded token on the emulated device and exit")
    args = ap.parse_args(argv)
    if args.emulated_overhead:
        for placement in ("gpu", "hybrid"):
            print(json.dumps(emulated_overhead(placement=placement)))
        return 0

    import gguf

    qtype = int(gguf.GGMLQuantizationType[args.qtype.upper()])
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.run_tests and run_gpu_tests() != 0:
        print("GPU tests failed: not timing", file=sys.stderr)
        return 1
    if args.build_llama and not args.llama_bench:
        args.llama_bench = build_llama_bench(work)
    bw = cpu_read_bandwidth(args.threads)
    print(f"CPU read bandwidth ({args.threads} threads): {bw:.1f} GB/s", flush=True)
    results: list[Result] = []
    for key in args.shapes.split(","):
        shape = SHAPES[key]
        budget = None
        if key == "70b":
            budget = int(args.vram_budget_gb * (1 << 30))
            if args.max_layers_70b:
                shape = Shape(**{**shape.__dict__, "n_layers": args.max_layers_70b,
                                 "name": f"{shape.name} ({args.max_layers_70b} layers)"})
        path = work / f"{key}-{args.qtype.lower()}-{shape.n_layers}l.gguf"
        if not path.is_file():
            t0 = time.perf_counter()
            write_synthetic_gguf(path, shape, qtype=qtype)
            print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        if not args.skip_check:
            print(f"{shape.name}: check vs CPU backend: {_check(path, args.threads)}", flush=True)
        for variant in args.variants.split(","):
            pp, tg, gbps, totals = _time_edgerun(path, variant, args.prompt, args.gen, args.threads, budget)
            note = f"gpu {totals['gpu'] / 2**30:.1f} GiB" if totals.get("gpu") else ""
            results.append(Result(shape.name, f"edgerun {variant}", pp, tg, note, gbps))
            print(f"  {results[-1]}", flush=True)
        if args.llama_bench:
            peers = [("llama.cpp -ngl 99 -ot ffn=CPU", ["-ngl", "99", "-ot", "ffn_.*=CPU"]),
                     ("llama.cpp -ngl 0", ["-ngl", "0"])]
            if budget is None:
                peers.append(("llama.cpp -ngl 99", ["-ngl", "99"]))
            else:  # as many whole layers as the capped VRAM holds, like our gpu mode
                from edgerun.quant.gguf_file import GGUFFile
                from edgerun.runtime.planner import plan_for_file

                with GGUFFile(path) as gf:
                    p = plan_for_file(gf, ctx=args.prompt + args.gen + 32, mode="gpu", vram_budget=budget)
                ngl = sum(1 for d in p.layers.values() if d["attn"] == "gpu" and d["ffn"] == "gpu")
                peers.append((f"llama.cpp -ngl {ngl}", ["-ngl", str(ngl)]))
            for name, extra in peers:
                try:
                    pp, tg = _llama_bench(args.llama_bench, path, args.prompt, args.gen, args.reps,
                                          args.threads, extra)
                except Exception as e:  # keep the rest of the table
                    print(f"  {name}: {e}", file=sys.stderr)
                    pp = tg = float("nan")
                results.append(Result(shape.name, name, pp, tg))
                print(f"  {results[-1]}", flush=True)

    # one table: ratios against the llama.cpp peer of each variant
    def is_peer(variant: str, peer: str) -> bool:
        if variant == "edgerun hybrid":
            return peer == "llama.cpp -ngl 99 -ot ffn=CPU"
        if variant == "edgerun cpu":
            return peer == "llama.cpp -ngl 0"
        if variant == "edgerun gpu":
            return peer.startswith("llama.cpp -ngl") and "-ot" not in peer and peer != "llama.cpp -ngl 0"
        return False

    print()
    print(f"{'model':<28} {'variant':<32} {'prefill t/s':>12} {'decode t/s':>11} {'pp ratio':>9} "
          f"{'tg ratio':>9} {'FFN BW/CPU BW':>14}  note")
    for r in results:
        peer = next((x for x in results if x.shape == r.shape and is_peer(r.variant, x.variant)), None)
        ppr = r.prefill_tps / peer.prefill_tps if peer and peer.prefill_tps > 0 else float("nan")
        tgr = r.decode_tps / peer.decode_tps if peer and peer.decode_tps > 0 else float("nan")
        frac = r.ffn_gbps / bw if r.variant in ("edgerun hybrid", "edgerun cpu") else float("nan")
        print(f"{r.shape:<28} {r.variant:<32} {r.prefill_tps:>12.1f} {r.decode_tps:>11.2f} {ppr:>9.2f} "
              f"{tgr:>9.2f} {frac:>14.2f}  {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
