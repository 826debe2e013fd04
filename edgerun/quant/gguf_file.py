"""A validating, memory-mapped GGUF (v2/v3, little-endian) reader.

Unlike ``gguf.GGUFReader`` this reader never trusts a length, count or offset
from the file: every one is checked against the bytes that remain *before*
anything is allocated, so a truncated or hostile file raises :class:`GGUFError`
with a one-line message instead of crashing, hanging or allocating gigabytes.

Layout (all little-endian)::

    magic b"GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv     x  (string key, u32 value type, value)
    n_tensors x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml type, u64 offset)
    padding to general.alignment (default 32)
    tensor data (offsets above are relative to this point)

Strings are ``u64 length + bytes``; arrays are ``u32 element type + u64 count + elements``.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES

__all__ = ["GGUFError", "TensorInfo", "GGUFFile", "GGUF_MAGIC", "DEFAULT_ALIGNMENT"]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 4
# caps on Python objects built from the file (a 1-byte string costs ~60 bytes of RAM,
# so the file-size bound alone still allows a ~10x blow-up); real models are far below
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_ARRAY_OBJECTS = 1 << 23  # strings + nested arrays across all metadata arrays
_INT64_MAX = (1 << 63) - 1
# tokenizer.ggml.model values llama.cpp's vocabulary loader knows and edgerun can run with
TOKENIZER_MODELS = frozenset({"llama", "gpt2", "bert", "t5", "rwkv", "plamo2"})
MAX_VOCAB = 1 << 22
MAX_TOKEN_TYPE = 6  # llama.cpp's token types: undefined, normal, unknown, control, user, unused, byte

_HEADER = struct.Struct("<4sIQQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# value type id -> (name, struct format, numpy dtype); 8 = string, 9 = array
_SCALAR_TYPES: dict[int, tuple[str, struct.Struct, np.dtype]] = {
    0: ("u8", struct.Struct("<B"), np.dtype("<u1")),
    1: ("i8", struct.Struct("<b"), np.dtype("<i1")),
    2: ("u16", struct.Struct("<H"), np.dtype("<u2")),
    3: ("i16", struct.Struct("<h"), np.dtype("<i2")),
    4: ("u32", struct.Struct("<I"), np.dtype("<u4")),
    5: ("i32", struct.Struct("<i"), np.dtype("<i4")),
    6: ("f32", struct.Struct("<f"), np.dtype("<f4")),
    7: ("bool", struct.Struct("<B"), np.dtype("<u1")),
    10: ("u64", struct.Struct("<Q"), np.dtype("<u8")),
    11: ("i64", struct.Struct("<q"), np.dtype("<i8")),
    12: ("f64", struct.Struct("<d"), np.dtype("<f8")),
}
_T_STRING = 8
_T_ARRAY = 9
_T_BOOL = 7
_FLOAT_TYPES = (6, 12)

# smallest possible encodings, used to reject absurd counts up front
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, >= 1 key byte, value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name len, >= 1 name byte, n_dims, 1 ne, type, offset
_MIN_ELEM_BYTES = {_T_STRING: 8, _T_ARRAY: 12}

_MISSING: Any = object()


class GGUFError(ValueError):
    """A GGUF file is malformed, unsupported, or lacks/mistypes a requested metadata key."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file.

    ``shape`` is in GGUF ``ne`` order, i.e. ``(K, N)`` for a matrix with K input
    features; ``offset`` is the absolute byte offset in the file.
    """

    name: str
    qtype: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_rows(self) -> int:
        """Product of ``shape[1:]`` (1 for a vector)."""
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of ``shape[0]`` elements in this tensor's block layout."""
        return self.nbytes // self.n_rows

    @property
    def type_name(self) -> str:
        """The ggml type name, e.g. ``"Q4_K"``."""
        return GGMLQuantizationType(self.qtype).name


def _type_label(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return "array"
    return type(v).__name__


def _type_ok(value: Any, typ: type) -> bool:
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is list:
        return isinstance(value, (list, np.ndarray))
    return isinstance(value, typ)


class GGUFFile:
    """A validated, memory-mapped GGUF file.

    All structural checks happen in the constructor; afterwards :meth:`raw` and
    :meth:`array` are cheap views into the map. Numeric metadata arrays are
    returned as (copied) numpy arrays, string arrays as ``list[str]``; string
    values that are not valid UTF-8 are decoded with replacement characters
    (keys and tensor names must be valid UTF-8). ``OSError`` from opening the
    path propagates unchanged; every problem with the file's content raises
    :class:`GGUFError`.
    """

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    alignment: int
    data_offset: int
    file_size: int

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata = {}
        self.tensors = {}
        self._obj_budget = MAX_ARRAY_OBJECTS
        self._value_types: dict[str, int] = {}
        self._mm: mmap.mmap | None = None
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                raise self._err(f"file too small ({size} bytes) to be a GGUF file")
            self.file_size = size
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._mm = mm
        try:
            self._parse(mm)
        except GGUFError:
            self.close()
            raise
        except (struct.error, ValueError, OverflowError, IndexError, TypeError, MemoryError) as e:
            # safety net: every path above should already raise GGUFError
            self.close()
            raise self._err(f"malformed file ({type(e).__name__}: {e})") from None

    # ------------------------------------------------------------------ parsing

    def _err(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path.name}: {msg}")

    def _need(self, pos: int, n: int, what: str) -> None:
        if n < 0 or pos + n > self.file_size:
            raise self._err(
                f"truncated: {what} needs {n} bytes at offset {pos}, "
                f"only {max(self.file_size - pos, 0)} remain"
            )

    def _u32(self, mm: mmap.mmap, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        return _U32.unpack_from(mm, pos)[0]

    def _u64(self, mm: mmap.mmap, pos: int, what: str) -> int:
        self._need(pos, 8, what)
        return _U64.unpack_from(mm, pos)[0]

    def _string(self, mm: mmap.mmap, pos: int, what: str, strict: bool) -> tuple[str, int]:
        n = self._u64(mm, pos, f"{what} length")
        pos += 8
        if n > self.file_size - pos:
            raise self._err(f"{what}: string length {n} exceeds the {self.file_size - pos} bytes remaining")
        raw = mm[pos : pos + n]
        if strict:
            try:
                s = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self._err(f"{what}: invalid UTF-8 {raw[:40]!r}") from None
        else:
            s = raw.decode("utf-8", "replace")
        return s, pos + n

    def _string_array(self, mm: mmap.mmap, pos: int, count: int, what: str) -> tuple[list[str], int]:
        size = self.file_size
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for i in range(count):
            if pos + 8 > size:
                raise self._err(f"truncated: {what}[{i}] string length at offset {pos}")
            n = unpack(mm, pos)[0]
            pos += 8
            if n > size - pos:
                raise self._err(f"{what}[{i}]: string length {n} exceeds the {size - pos} bytes remaining")
            append(mm[pos : pos + n].decode("utf-8", "replace"))
            pos += n
        return out, pos

    def _value(self, mm: mmap.mmap, pos: int, vtype: int, what: str, depth: int) -> tuple[Any, int]:
        st = _SCALAR_TYPES.get(vtype)
        if st is not None:
            name, s, _ = st
            self._need(pos, s.size, f"{what} ({name})")
            v = s.unpack_from(mm, pos)[0]
            if vtype == _T_BOOL:
                v = bool(v)
            return v, pos + s.size
        if vtype == _T_STRING:
            return self._string(mm, pos, what, strict=False)
        if vtype == _T_ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self._err(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
            etype = self._u32(mm, pos, f"{what} array element type")
            count = self._u64(mm, pos + 4, f"{what} array count")
            pos += 12
            remaining = self.file_size - pos
            est = _SCALAR_TYPES.get(etype)
            if est is not None:
                name, _, dt = est
                if count > remaining // dt.itemsize:
                    raise self._err(
                        f"{what}: array of {count} {name} needs {count * dt.itemsize} bytes, "
                        f"only {remaining} remain"
                    )
                arr = np.frombuffer(mm, dtype=dt, count=count, offset=pos).copy()
                if etype == _T_BOOL:
                    arr = arr != 0
                return arr, pos + count * dt.itemsize
            if etype not in _MIN_ELEM_BYTES:
                raise self._err(f"{what}: unknown array element type {etype}")
            if count > remaining // _MIN_ELEM_BYTES[etype]:
                raise self._err(f"{what}: array count {count} is impossible with {remaining} bytes remaining")
            if count > self._obj_budget:
                raise self._err(f"{what}: more than {MAX_ARRAY_OBJECTS} strings/arrays in metadata arrays")
            self._obj_budget -= count
            if etype == _T_STRING:
                return self._string_array(mm, pos, count, what)
            items = []
            for i in range(count):
                v, pos = self._value(mm, pos, _T_ARRAY, f"{what}[{i}]", depth + 1)
                items.append(v)
            return items, pos
        raise self._err(f"{what}: unknown value type {vtype}")

    def _parse(self, mm: mmap.mmap) -> None:
        size = self.file_size
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(mm, 0)
        if magic != GGUF_MAGIC:
            raise self._err(f"bad magic {magic!r} (expected {GGUF_MAGIC!r})")
        if version not in SUPPORTED_VERSIONS:
            hint = " (big-endian file?)" if version & 0xFFFF == 0 and version else ""
            raise self._err(f"unsupported GGUF version {version}{hint}")
        self.version = version
        pos = _HEADER.size
        remaining = size - pos
        if n_kv > remaining // _MIN_KV_BYTES or n_kv > MAX_KV:
            raise self._err(f"n_kv {n_kv} is absurd for a {size}-byte file")
        if n_tensors > remaining // _MIN_TENSOR_INFO_BYTES or n_tensors > MAX_TENSORS:
            raise self._err(f"n_tensors {n_tensors} is absurd for a {size}-byte file")
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > remaining:
            raise self._err(f"n_kv {n_kv} + n_tensors {n_tensors} do not fit in a {size}-byte file")

        # ---- metadata
        meta: dict[str, Any] = {}
        types: dict[str, int] = {}
        for i in range(n_kv):
            key, pos = self._string(mm, pos, f"metadata key #{i}", strict=True)
            if not key:
                raise self._err(f"metadata key #{i} is empty")
            if key in meta:
                raise self._err(f"duplicate metadata key {key!r}")
            vtype = self._u32(mm, pos, f"metadata {key!r} value type")
            pos += 4
            meta[key], pos = self._value(mm, pos, vtype, f"metadata {key!r}", 0)
            types[key] = vtype
        self.metadata = meta
        self._value_types = types

        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in meta:
            a = meta["general.alignment"]
            if types["general.alignment"] in (_T_STRING, _T_ARRAY, _T_BOOL, *_FLOAT_TYPES):
                raise self._err(f"general.alignment must be an integer, got {_type_label(a)}")
            if a <= 0 or a & (a - 1):
                raise self._err(f"general.alignment {a} is not a power of two")
            alignment = int(a)
        self.alignment = alignment

        # ---- tensor infos
        infos: list[tuple[str, tuple[int, ...], int, int, int]] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name, pos = self._string(mm, pos, f"tensor #{i} name", strict=True)
            if not name:
                raise self._err(f"tensor #{i} has an empty name")
            if name in seen:
                raise self._err(f"duplicate tensor name {name!r}")
            seen.add(name)
            n_dims = self._u32(mm, pos, f"tensor {name!r} n_dims")
            pos += 4
            if not 1 <= n_dims <= MAX_DIMS:
                raise self._err(f"tensor {name!r}: n_dims {n_dims} not in 1..{MAX_DIMS}")
            self._need(pos, 8 * n_dims, f"tensor {name!r} dims")
            ne = struct.unpack_from(f"<{n_dims}Q", mm, pos)
            pos += 8 * n_dims
            n_el = 1
            for d in ne:
                if d == 0:
                    raise self._err(f"tensor {name!r}: zero dimension in shape {ne}")
                n_el *= d
                if n_el > _INT64_MAX:
                    raise self._err(f"tensor {name!r}: element count of shape {ne} overflows int64")
            qtype = self._u32(mm, pos, f"tensor {name!r} type")
            offset = self._u64(mm, pos + 4, f"tensor {name!r} offset")
            pos += 12
            try:
                gq = GGMLQuantizationType(qtype)
                block, type_size = GGML_QUANT_SIZES[gq]
            except (ValueError, KeyError):
                raise self._err(f"tensor {name!r}: unknown ggml type {qtype}") from None
            if ne[0] % block:
                raise self._err(
                    f"tensor {name!r}: ne[0]={ne[0]} not a multiple of {gq.name} block size {block}"
                )
            if offset % alignment:
                raise self._err(f"tensor {name!r}: offset {offset} not aligned to {alignment}")
            nbytes = (n_el // block) * type_size
            infos.append((name, tuple(ne), qtype, offset, nbytes))

        data_offset = (pos + alignment - 1) // alignment * alignment
        self.data_offset = data_offset

        # ---- bounds and overlap
        tensors: dict[str, TensorInfo] = {}
        for name, ne, qtype, offset, nbytes in infos:
            start = data_offset + offset
            if start + nbytes > size:
                raise self._err(
                    f"tensor {name!r}: data [{start}, {start + nbytes}) extends past end of file ({size})"
                )
            tensors[name] = TensorInfo(name, qtype, ne, start, nbytes)
        by_start = sorted(tensors.values(), key=lambda t: t.offset)
        for a, b in zip(by_start, by_start[1:], strict=False):
            if b.offset < a.offset + a.nbytes:
                raise self._err(f"tensors {a.name!r} and {b.name!r} overlap")
        self.tensors = tensors
        self._check_tokenizer()

    # ------------------------------------------------------------------ tokenizer metadata

    def _check_tokenizer(self) -> None:
        """Validate the vocabulary metadata that llama.cpp's vocabulary loader trusts.

        A bad value there (an out-of-range special token id, a duplicated token string, an
        unknown tokenizer model, arrays of the wrong length) aborts the process inside
        llama.cpp, with no message; here it is a GGUFError naming the key.
        """
        md = self.metadata
        model = self.get("tokenizer.ggml.model", str, None)
        if model is None:  # no vocabulary: llama.cpp refuses such a file with an error of its own
            return
        if model not in TOKENIZER_MODELS:
            raise self._err(f"tokenizer.ggml.model: unsupported tokenizer {model!r} "
                            f"(supported: {', '.join(sorted(TOKENIZER_MODELS))})")
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise self._err("tokenizer.ggml.tokens: must be a non-empty array of strings")
        n = len(tokens)
        if n > MAX_VOCAB:
            raise self._err(f"tokenizer.ggml.tokens: {n} tokens is more than {MAX_VOCAB}")
        index: dict[str, int] = {}
        for i, t in enumerate(tokens):
            j = index.setdefault(t, i)
            if j != i:
                raise self._err(f"tokenizer.ggml.tokens: token {t[:40]!r} appears twice (ids {j} and {i})")
        for key, kinds in (("tokenizer.ggml.scores", "fi"), ("tokenizer.ggml.token_type", "iu")):
            if key not in md:
                continue
            arr = md[key]
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in kinds or arr.ndim != 1:
                raise self._err(f"{key}: must be a numeric array")
            if len(arr) != n:
                raise self._err(f"{key}: {len(arr)} entries for {n} tokens")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise self._err(f"{key}: holds NaN or infinite values")
            if key.endswith("token_type") and (arr.min() < 0 or arr.max() > MAX_TOKEN_TYPE):
                raise self._err(f"{key}: values must be in 0..{MAX_TOKEN_TYPE}")
        merges = md.get("tokenizer.ggml.merges")
        if merges is not None:
            if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
                raise self._err("tokenizer.ggml.merges: must be an array of strings")
            # llama.cpp takes a merge's two halves without looking them up (some vocabularies list
            # merges whose halves are not tokens); only the separating space is required
            for i, m in enumerate(merges):
                cut = m.find(" ", 1)
                if cut < 0 or cut == len(m) - 1:
                    raise self._err(f"tokenizer.ggml.merges[{i}] {m[:40]!r} is not two pieces separated "
                                    "by a space")
        for key, value in md.items():
            if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
                if self._value_types[key] in (_T_STRING, _T_ARRAY, _T_BOOL, *_FLOAT_TYPES):
                    raise self._err(f"{key}: must be an integer")
                # -1 (as i32) means "none", as llama.cpp reads it
                if not (value == -1 or 0 <= value < n) and not (value == 0xFFFFFFFF and
                                                               self._value_types[key] == 4):
                    raise self._err(f"{key}: token id {value} is outside the vocabulary of {n} tokens")
        for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                    "tokenizer.ggml.add_space_prefix"):
            if key in md and not isinstance(md[key], bool):
                raise self._err(f"{key}: must be a bool")
        tpl = md.get("tokenizer.chat_template")
        if tpl is not None and not isinstance(tpl, str):
            raise self._err("tokenizer.chat_template: must be a string")

    # ------------------------------------------------------------------ access

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (e.g. ``"gemma3"``), or None when absent."""
        return self.get("general.architecture", str, None)

    def value_type(self, key: str) -> int:
        """The on-disk GGUF value type id of metadata ``key`` (e.g. 4 for u32, 9 for array)."""
        return self._value_types[key]

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """Metadata ``key`` checked against ``typ`` (int, float, bool, str or list).

        ``int`` rejects bools; ``float`` accepts ints and returns a float; ``list``
        accepts lists and numpy arrays. A missing key returns ``default`` or, with
        no default, raises GGUFError; a wrongly typed value always raises
        ``GGUFError("metadata key X: expected int, got str")``.
        """
        if key not in self.metadata:
            if default is _MISSING:
                raise self._err(f"metadata key {key}: missing")
            return default
        value = self.metadata[key]
        typs = typ if isinstance(typ, tuple) else (typ,)
        for t in typs:
            if _type_ok(value, t):
                return float(value) if t is float else value
        want = " or ".join(t.__name__ for t in typs)
        raise self._err(f"metadata key {key}: expected {want}, got {_type_label(value)}")

    def _info(self, name: str) -> TensorInfo:
        if self._mm is None:
            raise self._err("file is closed")
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path.name}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """Read-only uint8 view of a tensor's bytes.

        Shape ``(N, row_bytes)`` with N = product of ``ne[1:]`` for tensors of 2+
        dims, ``(row_bytes,)`` for vectors. Raises KeyError for an unknown name.
        """
        t = self._info(name)
        buf = np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        if len(t.shape) == 1:
            return buf
        return buf.reshape(t.n_rows, t.row_bytes)

    def array(self, name: str) -> np.ndarray:
        """An F32/F16/BF16 tensor as float32 with numpy shape ``reversed(ne)``, e.g. (N, K).

        F32 tensors are returned as a read-only view of the map; F16/BF16 are
        converted into a new array. Other types raise GGUFError.
        """
        t = self._info(name)
        n_el = t.n_rows * t.shape[0]
        shape = tuple(reversed(t.shape))
        if t.qtype == GGMLQuantizationType.F32:
            a = np.frombuffer(self._mm, dtype="<f4", count=n_el, offset=t.offset)
        elif t.qtype == GGMLQuantizationType.F16:
            a = np.frombuffer(self._mm, dtype="<f2", count=n_el, offset=t.offset).astype(np.float32)
        elif t.qtype == GGMLQuantizationType.BF16:
            bits = np.frombuffer(self._mm, dtype="<u2", count=n_el, offset=t.offset)
            a = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            raise self._err(f"tensor {name!r}: array() needs F32/F16/BF16, got {t.type_name}")
        return a.reshape(shape)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release the map. Views handed out earlier keep their memory alive until dropped."""
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still reference it; it is unmapped when they are collected

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, version={getattr(self, 'version', None)}, "
            f"{len(self.metadata)} kv, {len(self.tensors)} tensors)"
        )
