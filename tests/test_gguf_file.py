"""Tests for the validating GGUF reader (edgerun.quant.gguf_file)."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgerun.quant.gguf_file import GGUFError, GGUFFile, TensorInfo

Q = gguf.GGMLQuantizationType


# ---------------------------------------------------------------------------- helpers


def write_valid(path: Path) -> dict[str, np.ndarray]:
    """Write a small valid GGUF with GGUFWriter; return the source arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "f32.vec": rng.standard_normal(64).astype(np.float32),
        "f32.mat": rng.standard_normal((3, 8)).astype(np.float32),
        "f16.mat": rng.standard_normal((4, 16)).astype(np.float16),
        "q8.mat": rng.standard_normal((5, 64)).astype(np.float32),
    }
    w = gguf.GGUFWriter(str(path), "testarch")
    w.add_uint32("testarch.block_count", 7)
    w.add_int32("test.neg", -5)
    w.add_float32("test.eps", 1e-6)
    w.add_bool("test.flag", True)
    w.add_string("test.name", "héllo wörld")
    w.add_uint64("test.big", 1 << 40)
    w.add_array("test.strs", ["a", "", "ü", "<bos>"])
    w.add_array("test.ints", [1, 2, 3])
    w.add_array("test.floats", [0.5, 1.5])
    for name in ("f32.vec", "f32.mat", "f16.mat"):
        w.add_tensor(name, arrays[name])
    q8 = gguf.quants.quantize(arrays["q8.mat"], Q.Q8_0)
    w.add_tensor("q8.mat", q8, raw_dtype=Q.Q8_0)
    arrays["q8.raw"] = q8
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


def gstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def tinfo(name: str, ne: tuple[int, ...], qtype: int, offset: int) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(ne))
        + struct.pack(f"<{len(ne)}Q", *ne)
        + struct.pack("<IQ", qtype, offset)
    )


def build(
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    data: bytes = b"",
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    align: int = 32,
) -> bytes:
    """Hand-assemble a GGUF file (for malformed variants)."""
    kvs = [kv("general.architecture", 8, gstr("toy"))] if kvs is None else kvs
    tensors = [] if tensors is None else tensors
    head = magic + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\0" * (-len(body) % align)
    return body + data


def toy_file() -> bytes:
    """A valid hand-built file with two F32 tensors."""
    tensors = [tinfo("a", (8,), Q.F32, 0), tinfo("b", (4, 2), Q.F32, 32)]
    data = np.arange(8, dtype="<f4").tobytes() + np.arange(8, dtype="<f4").tobytes()
    return build(tensors=tensors, data=data)


def load_bytes(tmp_path: Path, blob: bytes, name: str = "x.gguf") -> GGUFFile:
    p = tmp_path / name
    p.write_bytes(blob)
    return GGUFFile(p)


def expect_error(tmp_path: Path, blob: bytes, match: str | None = None) -> GGUFError:
    with pytest.raises(GGUFError, match=match) as ei:
        load_bytes(tmp_path, blob)
    assert "\n" not in str(ei.value)
    return ei.value


# ---------------------------------------------------------------------------- valid files


@pytest.fixture()
def valid(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    p = tmp_path / "valid.gguf"
    return p, write_valid(p)


def test_roundtrip_metadata(valid: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = valid
    with GGUFFile(path) as f:
        assert f.path == path
        assert f.version == 3
        assert f.architecture == "testarch"
        assert f.alignment == 32
        assert f.data_offset % 32 == 0
        m = f.metadata
        assert m["testarch.block_count"] == 7 and type(m["testarch.block_count"]) is int
        assert m["test.neg"] == -5
        assert m["test.eps"] == pytest.approx(1e-6)
        assert m["test.flag"] is True
        assert m["test.name"] == "héllo wörld"
        assert m["test.big"] == 1 << 40
        assert m["test.strs"] == ["a", "", "ü", "<bos>"]
        assert list(m["test.ints"]) == [1, 2, 3]
        np.testing.assert_allclose(m["test.floats"], [0.5, 1.5])


def test_roundtrip_tensors(valid: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, arrays = valid
    with GGUFFile(path) as f:
        assert list(f.tensors) == ["f32.vec", "f32.mat", "f16.mat", "q8.mat"]
        t = f.tensors["f32.mat"]
        assert isinstance(t, TensorInfo)
        assert t.shape == (8, 3) and t.qtype == Q.F32 and t.nbytes == 96
        assert f.tensors["q8.mat"].shape == (64, 5) and f.tensors["q8.mat"].qtype == Q.Q8_0
        np.testing.assert_array_equal(f.array("f32.vec"), arrays["f32.vec"])
        np.testing.assert_array_equal(f.array("f32.mat"), arrays["f32.mat"])
        a16 = f.array("f16.mat")
        assert a16.dtype == np.float32 and a16.shape == (4, 16)
        np.testing.assert_array_equal(a16, arrays["f16.mat"].astype(np.float32))
        assert f.raw("f32.vec").shape == (256,)
        assert f.raw("f32.mat").shape == (3, 32)
        r8 = f.raw("q8.mat")
        assert r8.dtype == np.uint8 and r8.shape == (5, 68)
        np.testing.assert_array_equal(r8, arrays["q8.raw"])
        deq = gguf.quants.dequantize(r8, Q.Q8_0)
        np.testing.assert_allclose(deq, arrays["q8.mat"], atol=0.05)
        assert not r8.flags.writeable
        with pytest.raises(GGUFError, match="F32/F16/BF16"):
            f.array("q8.mat")
        with pytest.raises(KeyError):
            f.raw("nope")
        # every tensor is inside the file and they do not overlap
        spans = sorted((t.offset, t.offset + t.nbytes) for t in f.tensors.values())
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert spans[-1][1] <= path.stat().st_size


def test_bf16_and_3d(tmp_path: Path) -> None:
    vals = np.array([1.0, -2.5, 3.0, 0.15625, 7.0, 8.0, -1.0, 0.0], dtype=np.float32)
    bf = (vals.view(np.uint32) >> 16).astype("<u2").tobytes()
    tensors = [tinfo("bf", (2, 2, 2), Q.BF16, 0)]
    f = load_bytes(tmp_path, build(tensors=tensors, data=bf))
    assert f.array("bf").shape == (2, 2, 2)
    np.testing.assert_array_equal(f.array("bf").ravel(), vals)
    assert f.raw("bf").shape == (4, 4)
    f.close()


def test_get_helper(valid: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = valid
    with GGUFFile(path) as f:
        assert f.get("testarch.block_count", int) == 7
        assert f.get("test.eps", float) == pytest.approx(1e-6)
        assert f.get("testarch.block_count", float) == 7.0
        assert f.get("test.flag", bool) is True
        assert f.get("test.strs", list) == ["a", "", "ü", "<bos>"]
        assert len(f.get("test.ints", list)) == 3
        assert f.get("missing.key", int, default=3) == 3
        assert f.get("missing.key", int, default=None) is None
        with pytest.raises(GGUFError, match="metadata key test.name: expected int, got str"):
            f.get("test.name", int)
        with pytest.raises(GGUFError, match="expected int, got bool"):
            f.get("test.flag", int)
        with pytest.raises(GGUFError, match="missing.key: missing"):
            f.get("missing.key", int)


def test_close_with_live_views(valid: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, arrays = valid
    f = GGUFFile(path)
    view = f.array("f32.vec")
    f.close()
    f.close()
    np.testing.assert_array_equal(view, arrays["f32.vec"])  # still readable
    with pytest.raises(GGUFError, match="closed"):
        f.raw("f32.vec")


def test_custom_alignment(tmp_path: Path) -> None:
    kvs = [kv("general.alignment", 4, struct.pack("<I", 64))]
    tensors = [tinfo("a", (4,), Q.F32, 0), tinfo("b", (4,), Q.F32, 64)]
    data = b"\1" * 64 + b"\2" * 16
    f = load_bytes(tmp_path, build(kvs, tensors, data, align=64))
    assert f.alignment == 64 and f.data_offset % 64 == 0
    assert f.tensors["b"].offset == f.data_offset + 64
    assert f.architecture is None
    f.close()


def test_toy_is_valid(tmp_path: Path) -> None:
    f = load_bytes(tmp_path, toy_file())
    assert list(f.tensors) == ["a", "b"]
    np.testing.assert_array_equal(f.array("b"), np.arange(8, dtype=np.float32).reshape(2, 4))
    f.close()


def test_large_vocab_parses_fast(tmp_path: Path) -> None:
    n = 200_000
    toks = [f"tok{i}" for i in range(n)]
    payload = struct.pack("<IQ", 8, n) + b"".join(gstr(t) for t in toks)
    blob = build([kv("tokenizer.ggml.tokens", 9, payload)])
    t0 = time.perf_counter()
    f = load_bytes(tmp_path, blob)
    dt = time.perf_counter() - t0
    assert f.metadata["tokenizer.ggml.tokens"] == toks
    assert dt < 1.0, dt  # well under in practice; slack for a busy shared box
    f.close()


# ---------------------------------------------------------------------------- malformed files


def test_truncated_everywhere(tmp_path: Path) -> None:
    valid_path = tmp_path / "v.gguf"
    write_valid(valid_path)
    blob = valid_path.read_bytes()
    with GGUFFile(valid_path) as f:
        end = max(t.offset + t.nbytes for t in f.tensors.values())  # the writer pads after this
    cuts = sorted(set(np.linspace(0, end - 1, 40, dtype=int).tolist()) | set(range(0, 30)))
    for cut in cuts:
        with pytest.raises(GGUFError):
            load_bytes(tmp_path, blob[:cut], "cut.gguf")
    toy = toy_file()
    for cut in range(len(toy)):
        with pytest.raises(GGUFError):
            load_bytes(tmp_path, toy[:cut], "cut.gguf")


def test_empty_and_tiny(tmp_path: Path) -> None:
    expect_error(tmp_path, b"", "too small")
    expect_error(tmp_path, b"GGUF\3\0\0\0", "too small")


def test_bad_magic(tmp_path: Path) -> None:
    expect_error(tmp_path, build(magic=b"GGML"), "bad magic")


def test_bad_version(tmp_path: Path) -> None:
    expect_error(tmp_path, build(version=99), "unsupported GGUF version 99")
    expect_error(tmp_path, build(version=1), "unsupported GGUF version 1")
    expect_error(tmp_path, build(version=3 << 24), "big-endian")


def test_v2_accepted(tmp_path: Path) -> None:
    f = load_bytes(tmp_path, build(version=2))
    assert f.version == 2
    f.close()


def test_huge_counts(tmp_path: Path) -> None:
    expect_error(tmp_path, build(n_tensors=1 << 62), "n_tensors")
    expect_error(tmp_path, build(n_kv=(1 << 64) - 1), "n_kv")
    expect_error(tmp_path, build(n_kv=1000))


def test_huge_string_length(tmp_path: Path) -> None:
    bad = struct.pack("<Q", 1 << 60) + b"key"
    expect_error(tmp_path, build([bad + struct.pack("<I", 4) + b"\0" * 4]), "string length")
    expect_error(tmp_path, build([kv("k", 8, struct.pack("<Q", (1 << 64) - 1) + b"abc")]), "string length")
    # a string element inside an array
    payload = struct.pack("<IQ", 8, 2) + gstr("ok") + struct.pack("<Q", 1 << 50)
    expect_error(tmp_path, build([kv("k", 9, payload)]), "string length")
    expect_error(tmp_path, build(tensors=[struct.pack("<Q", 1 << 40) + b"x" * 40]), "string length")


def test_huge_array_count(tmp_path: Path) -> None:
    for etype in (0, 4, 6, 10, 8, 9):
        payload = struct.pack("<IQ", etype, 1 << 61) + b"\0" * 64
        expect_error(tmp_path, build([kv("arr", 9, payload)]), "array")


def test_nested_arrays(tmp_path: Path) -> None:
    inner = struct.pack("<IQ", 5, 2) + struct.pack("<2i", 7, -7)
    payload = struct.pack("<IQ", 9, 2) + inner + inner
    f = load_bytes(tmp_path, build([kv("nested", 9, payload)]))
    assert [list(x) for x in f.metadata["nested"]] == [[7, -7], [7, -7]]
    f.close()
    deep = struct.pack("<IQ", 0, 0)
    for _ in range(10):
        deep = struct.pack("<IQ", 9, 1) + deep
    expect_error(tmp_path, build([kv("deep", 9, deep)]), "nested deeper")


def test_array_object_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgerun.quant.gguf_file as gf

    monkeypatch.setattr(gf, "MAX_ARRAY_OBJECTS", 5)
    three = struct.pack("<IQ", 8, 3) + b"".join(gstr(c) for c in "abc")
    f = load_bytes(tmp_path, build([kv("s1", 9, three)]))
    assert f.metadata["s1"] == ["a", "b", "c"]
    f.close()
    expect_error(tmp_path, build([kv("s1", 9, three), kv("s2", 9, three)]), "strings/arrays")


def test_unknown_value_type(tmp_path: Path) -> None:
    expect_error(tmp_path, build([kv("k", 13, b"\0" * 16)]), "unknown value type 13")
    expect_error(tmp_path, build([kv("k", 9, struct.pack("<IQ", 77, 1) + b"\0" * 16)]), "element type 77")


def test_bad_keys(tmp_path: Path) -> None:
    dup = [kv("a", 4, b"\1\0\0\0"), kv("a", 4, b"\2\0\0\0")]
    expect_error(tmp_path, build(dup), "duplicate metadata key")
    expect_error(tmp_path, build([kv(b"\xff\xfe", 4, b"\0" * 4)]), "invalid UTF-8")
    expect_error(tmp_path, build([kv("", 4, b"\0" * 4)]), "empty")


def test_bad_alignment(tmp_path: Path) -> None:
    expect_error(tmp_path, build([kv("general.alignment", 4, struct.pack("<I", 24))]), "power of two")
    expect_error(tmp_path, build([kv("general.alignment", 4, struct.pack("<I", 0))]), "power of two")
    expect_error(tmp_path, build([kv("general.alignment", 8, gstr("32"))]), "integer")


def test_unknown_tensor_type(tmp_path: Path) -> None:
    expect_error(tmp_path, build(tensors=[tinfo("a", (32,), 4, 0)], data=b"\0" * 64), "unknown ggml type 4")
    expect_error(tmp_path, build(tensors=[tinfo("a", (32,), 999, 0)], data=b"\0" * 64), "unknown ggml type")


def test_tensor_beyond_eof(tmp_path: Path) -> None:
    expect_error(tmp_path, build(tensors=[tinfo("a", (16,), Q.F32, 0)], data=b"\0" * 60), "past end")
    expect_error(tmp_path, build(tensors=[tinfo("a", (8,), Q.F32, 1 << 40)], data=b"\0" * 32), "past end")
    big = (1 << 31, 1 << 31)
    expect_error(tmp_path, build(tensors=[tinfo("a", big, Q.F32, 0)], data=b"\0" * 32), "past end")


def test_overlapping_tensors(tmp_path: Path) -> None:
    tensors = [tinfo("a", (16,), Q.F32, 0), tinfo("b", (8,), Q.F32, 32)]
    expect_error(tmp_path, build(tensors=tensors, data=b"\0" * 128), "overlap")
    same = [tinfo("a", (8,), Q.F32, 0), tinfo("b", (8,), Q.F32, 0)]
    expect_error(tmp_path, build(tensors=same, data=b"\0" * 64), "overlap")


def test_misaligned_offset(tmp_path: Path) -> None:
    expect_error(tmp_path, build(tensors=[tinfo("a", (4,), Q.F32, 4)], data=b"\0" * 64), "not aligned")


def test_block_size_mismatch(tmp_path: Path) -> None:
    expect_error(tmp_path, build(tensors=[tinfo("q", (48, 2), Q.Q8_0, 0)], data=b"\0" * 256), "block size")
    expect_error(tmp_path, build(tensors=[tinfo("q", (128,), Q.Q4_K, 0)], data=b"\0" * 256), "block size")


def test_bad_dims(tmp_path: Path) -> None:
    data = b"\0" * 64
    expect_error(tmp_path, build(tensors=[tinfo("a", (4, 0), Q.F32, 0)], data=data), "zero dimension")
    expect_error(tmp_path, build(tensors=[tinfo("a", (0,), Q.F32, 0)], data=data), "zero dimension")
    expect_error(tmp_path, build(tensors=[tinfo("a", (1, 1, 1, 1, 1), Q.F32, 0)], data=data), "n_dims")
    no_dims = gstr("a") + struct.pack("<IIQ", 0, Q.F32, 0) + b"\0" * 32
    expect_error(tmp_path, build(tensors=[no_dims], data=data), "n_dims")
    huge = (1 << 62, 1 << 62)
    expect_error(tmp_path, build(tensors=[tinfo("a", huge, Q.F32, 0)], data=data), "overflows")


def test_duplicate_and_bad_tensor_names(tmp_path: Path) -> None:
    tensors = [tinfo("a", (8,), Q.F32, 0), tinfo("a", (8,), Q.F32, 32)]
    expect_error(tmp_path, build(tensors=tensors, data=b"\0" * 64), "duplicate tensor name")
    bad = gstr(b"\xc3") + struct.pack("<IQIQ", 1, 8, Q.F32, 0)
    expect_error(tmp_path, build(tensors=[bad], data=b"\0" * 64), "invalid UTF-8")


def test_random_header_mutations(tmp_path: Path) -> None:
    valid_path = tmp_path / "v.gguf"
    write_valid(valid_path)
    base = valid_path.read_bytes()
    with GGUFFile(valid_path) as f:
        header_end = f.data_offset
    rng = random.Random(1234)
    path = tmp_path / "m.gguf"
    t0 = time.perf_counter()
    outcomes = {"ok": 0, "err": 0}
    for _ in range(200):
        blob = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(header_end)
            if rng.random() < 0.5:
                blob[i] ^= 1 << rng.randrange(8)
            else:
                blob[i] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        path.write_bytes(bytes(blob))
        try:
            with GGUFFile(path) as f:
                for name in f.tensors:
                    f.raw(name)
            outcomes["ok"] += 1
        except GGUFError as e:
            assert "\n" not in str(e)
            outcomes["err"] += 1
    assert outcomes["err"] > 0
    assert time.perf_counter() - t0 < 5.0


# ---------------------------------------------------------------------------- the real model


@pytest.mark.real
def test_real_gemma(gemma_path: Path) -> None:
    t0 = time.perf_counter()
    f = GGUFFile(gemma_path)
    dt = time.perf_counter() - t0
    assert dt < 2.0, dt
    assert f.metadata["general.architecture"] == "gemma3"
    assert f.architecture == "gemma3"
    ref = gguf.GGUFReader(str(gemma_path))
    assert len(f.tensors) == len(ref.tensors)
    toks = f.metadata["tokenizer.ggml.tokens"]
    assert isinstance(toks, list) and len(toks) > 100_000 and all(isinstance(t, str) for t in toks[:100])
    for rt in ref.tensors[:20]:
        t = f.tensors[rt.name]
        assert t.qtype == int(rt.tensor_type)
        assert t.shape == tuple(int(x) for x in rt.shape)
        assert t.offset == rt.data_offset and t.nbytes == rt.n_bytes
    norm = next(n for n, t in f.tensors.items() if t.qtype == Q.F32 and len(t.shape) == 1)
    assert np.isfinite(f.array(norm)).all()
    f.close()
