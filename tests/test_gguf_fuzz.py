"""Seeded GGUF fuzzing: mutations of a small real-layout model (a llama with a real SentencePiece-
style vocabulary that llama.cpp loads) run through `edgerun inspect` and a 2-token `edgerun run`.

Every outcome must be a clean exit (0, or an error message with exit 2): no signal (llama.cpp
aborting), no Python traceback, no hang. Several files run in one worker process; when a file
kills the worker, the rest continue in a fresh one.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from edgerun.quant.traits import quantize

SEED = 1234
N_MUTATIONS = 320
N_TRUNCATIONS = 40
PER_FILE_S = 60.0
ROOT = Path(__file__).resolve().parents[1]


def vocab() -> tuple[list[str], list[int], list[float]]:
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = ["\u2581", "\u2581h", "\u2581hi", "h", "i", "e", "r", "t", "\u2581t", "\u2581there", "th", "ere"]
    toks += words
    types += [1] * len(words)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    return toks, types, scores


def write_tiny(path: Path, **over: object) -> Path:
    """A 1-layer llama (dim 64) with a 271-token vocabulary; `over` replaces metadata values."""
    rng = np.random.default_rng(0)
    toks, types, scores = vocab()
    n_vocab, dim, ffn, heads, kv = len(toks), 64, 128, 4, 2
    hd = dim // heads
    w = GGUFWriter(str(path), "llama")
    meta = {"block_count": 1, "context_length": 256, "eps": 1e-6, "rope_base": 10000.0, "model": "llama",
            "tokens": toks, "bos": 1, "eos": 2, "unk": 0, "scores": scores, "types": types} | over
    w.add_block_count(int(meta["block_count"]))  # type: ignore[arg-type]
    w.add_context_length(int(meta["context_length"]))  # type: ignore[arg-type]
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(float(meta["eps"]))  # type: ignore[arg-type]
    w.add_rope_freq_base(float(meta["rope_base"]))  # type: ignore[arg-type]
    w.add_tokenizer_model(str(meta["model"]))
    w.add_token_list(meta["tokens"])  # type: ignore[arg-type]
    w.add_token_scores(meta["scores"])  # type: ignore[arg-type]
    w.add_token_types(meta["types"])  # type: ignore[arg-type]
    w.add_bos_token_id(int(meta["bos"]))  # type: ignore[arg-type]
    w.add_eos_token_id(int(meta["eos"]))  # type: ignore[arg-type]
    w.add_unk_token_id(int(meta["unk"]))  # type: ignore[arg-type]
    w.add_add_bos_token(True)
    if "chat_template" in meta:
        w.add_chat_template(str(meta["chat_template"]))

    def mat(name: str, n: int, k: int) -> None:
        x = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
        w.add_tensor(name, quantize(x, T.Q8_0), raw_dtype=T.Q8_0)

    def vec(name: str, n: int) -> None:
        w.add_tensor(name, (1 + 0.05 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, dim)
    vec("output_norm.weight", dim)
    mat("output.weight", n_vocab, dim)
    p = "blk.0."
    vec(p + "attn_norm.weight", dim)
    mat(p + "attn_q.weight", heads * hd, dim)
    mat(p + "attn_k.weight", kv * hd, dim)
    mat(p + "attn_v.weight", kv * hd, dim)
    mat(p + "attn_output.weight", dim, heads * hd)
    vec(p + "ffn_norm.weight", dim)
    mat(p + "ffn_gate.weight", ffn, dim)
    mat(p + "ffn_up.weight", ffn, dim)
    mat(p + "ffn_down.weight", dim, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SEMANTIC = {  # the malformed-model cases named in the issue, written whole
    "eos-id-past-vocab": {"eos": 100_000},
    "bos-id-past-vocab": {"bos": 271},
    "duplicate-token": {"tokens": vocab()[0][:-1] + ["\u2581hi"]},
    "tokenizer-none": {"model": "none"},
    "tokenizer-unknown": {"model": "sentencepiece-v9"},
    "nan-eps": {"eps": float("nan")},
    "nan-rope-base": {"rope_base": float("nan")},
    "zero-rope-base": {"rope_base": 0.0},
    "absurd-block-count": {"block_count": 4_000_000_000},
    "block-count-past-tensors": {"block_count": 2},
    "short-scores": {"scores": vocab()[2][:-5]},
    "bad-token-type": {"types": vocab()[1][:-1] + [99]},
    "zero-context": {"context_length": 0},
}

_U32 = [0, 1, 2, 3, 7, 8, 9, 12, 13, 255, 256, 270, 271, 272, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
_U64 = [0, 1, 271, 1 << 31, 1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def mutations(base: bytes, data_offset: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """N_MUTATIONS seeded edits of the header/metadata/tensor-info region, plus truncations."""
    out: list[tuple[str, bytes]] = []
    region = data_offset
    for i in range(N_MUTATIONS):
        b = bytearray(base)
        kind = i % 5
        pos = int(rng.integers(0, region - 8))
        if kind == 0:
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            b[pos] = int(rng.integers(0, 256))
        elif kind == 2:
            b[pos: pos + 4] = struct.pack("<I", _U32[int(rng.integers(0, len(_U32)))])
        elif kind == 3:
            b[pos: pos + 8] = struct.pack("<Q", _U64[int(rng.integers(0, len(_U64)))])
        else:  # a few random bytes in a row
            n = int(rng.integers(2, 9))
            b[pos: pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        out.append((f"mut{i}-k{kind}-at{pos}", bytes(b)))
    for i, cut in enumerate(sorted(rng.integers(1, len(base), N_TRUNCATIONS).tolist())):
        out.append((f"cut{i}-at{cut}", base[:cut]))
    return out


def run_worker(paths: list[Path]) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """Run every path; returns ({i: (inspect rc, run rc)}, {i: failure description})."""
    results: dict[int, tuple[int, int]] = {}
    failures: dict[int, str] = {}
    start = 0
    env = dict(os.environ, EDGERUN_HUGEPAGES="0", PYTHONPATH=str(ROOT))
    while start < len(paths):
        proc = subprocess.run([sys.executable, "-m", "tests.gguf_fuzz_worker", str(PER_FILE_S),
                               *map(str, paths[start:])], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=PER_FILE_S * (len(paths) - start) + 120)
        begun = None
        for line in proc.stdout.splitlines():
            parts = line.split(" ", 2)
            if parts[0] == "BEGIN":
                begun = start + int(parts[1])
            elif parts[0] == "END":
                rc = line.split()
                results[start + int(rc[1])] = (int(rc[2]), int(rc[3]))
                begun = None
            elif parts[0] == "TRACEBACK":
                failures[start + int(parts[1])] = "traceback: " + parts[2][:600]
        if "Traceback (most recent call last)" in proc.stderr and "Timeout" not in proc.stderr:
            failures.setdefault(begun if begun is not None else -1,
                                "traceback on stderr: " + proc.stderr[-800:])
        if begun is None:
            break
        why = (f"signal {-proc.returncode}" if proc.returncode < 0 else
               "hang" if "Timeout" in proc.stderr else f"died with {proc.returncode}")
        failures[begun] = f"{why}: {proc.stderr[-400:]}"
        start = begun + 1
    return results, failures


@pytest.mark.slow
def test_gguf_fuzz_no_signal_traceback_or_hang(tmp_path: Path) -> None:
    from edgerun.quant.gguf_file import GGUFFile

    base_path = write_tiny(tmp_path / "base.gguf")
    with GGUFFile(base_path) as gf:
        data_offset = gf.data_offset
    base = base_path.read_bytes()
    cases: list[tuple[str, Path]] = [("valid", base_path)]
    for name, over in SEMANTIC.items():
        cases.append((name, write_tiny(tmp_path / f"{name}.gguf", **over)))
    for name, blob in mutations(base, data_offset, np.random.default_rng(SEED)):
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(blob)
        cases.append((name, p))
    results, failures = run_worker([p for _, p in cases])
    named = {cases[i][0]: why for i, why in failures.items() if i >= 0}
    assert not failures, f"{len(failures)} of {len(cases)} files crashed, hung or raised: {named}"
    assert results[0] == (0, 0), "the valid base file must inspect and run"
    for i, (name, _) in enumerate(cases[1: 1 + len(SEMANTIC)], start=1):
        assert results[i][1] == 2, f"{name}: run should refuse the file (exit 2), got {results[i]}"
    outcome = Counter(results.values())
    print(f"\n{len(cases)} files: (inspect rc, run rc) counts {dict(outcome)}")
    assert len(results) == len(cases)
