"""The GGML type ids and block facts written in C and CUDA agree with gguf and edgerun/quant/traits.py.

The on-disk ids are the ids: native/blocks.h (the C kernels), native/dispatch.c (their per-type
table) and native/cuda/common.cuh (the CUDA kernels) each spell them out, so a typo there would
only show up as a wrong kernel for one type. Python takes its ids from quant/traits.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from pathlib import Path

import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edgerun.quant.traits import TRAITS

NATIVE = Path(__file__).resolve().parents[1] / "native"


def _c_enum_ids(text: str) -> dict[str, int]:
    """`ER_NAME = N` entries of the enum after the gguf id comment in blocks.h."""
    m = re.search(r"gguf\.GGMLQuantizationType ids \*/\s*enum\s*\{(.*?)\};", text, re.S)
    assert m, "type id enum not found in native/blocks.h"
    return {name: int(v) for name, v in re.findall(r"ER_(\w+)\s*=\s*(\d+)", m.group(1))}


def _cuda_ids(text: str) -> dict[str, int]:
    return {name: int(v) for name, v in re.findall(r"^#define QT_(\w+)\s+(\d+)\s*$", text, re.M)}


@pytest.mark.parametrize(
    ("path", "parse"),
    [
        pytest.param(NATIVE / "blocks.h", _c_enum_ids, id="c-blocks.h"),
        pytest.param(NATIVE / "cuda" / "common.cuh", _cuda_ids, id="cuda-common.cuh"),
    ],
)
def test_ids_match_gguf_and_traits(path: Path, parse) -> None:
    ids = parse(path.read_text())
    assert ids, f"no type ids parsed from {path}"
    for name, value in ids.items():
        assert GGMLQuantizationType[name].value == value, f"{path.name}: {name} = {value}"
    # every type the Python side has traits for has an id in the native sources, and no more
    assert set(ids.values()) == {int(q) for q in TRAITS}, f"{path.name} ids differ from quant/traits.py"


def test_c_block_sizes_match_gguf() -> None:
    """blocks.h's static_assert'ed block sizes and dispatch.c's values per block are gguf's."""
    blocks = (NATIVE / "blocks.h").read_text()
    sizes = {name.upper(): int(n) for name, n in re.findall(r"sizeof\(block_(\w+)\)\s*==\s*(\d+)", blocks)}
    assert sizes
    for name, nbytes in sizes.items():
        qt = GGMLQuantizationType[name]
        assert GGML_QUANT_SIZES[qt][1] == nbytes, name
        assert TRAITS[qt].type_size == nbytes, name
    consts = {"ER_QK": 32, "ER_QKK": 256, "1": 1}
    for m in re.finditer(r"#define (ER_QKK?) (\d+)", blocks):
        assert consts[m.group(1)] == int(m.group(2))
    table = (NATIVE / "dispatch.c").read_text()
    rows = re.findall(r"\{\.id = ER_(\w+), \.block = (\w+)", table)
    assert {GGMLQuantizationType[n].value for n, _ in rows} == {int(q) for q in TRAITS}
    for name, block in rows:
        qt = GGMLQuantizationType[name]
        assert consts[block] == GGML_QUANT_SIZES[qt][0] == TRAITS[qt].block_size, name


def test_library_supports_exactly_the_traits_types() -> None:
    """The built library's er_supports agrees with the traits table (and refuses other ids)."""
    spec = importlib.util.find_spec("edgerun._native")
    if spec is None or spec.origin is None:
        pytest.skip("native library not built")
    lib = ctypes.CDLL(spec.origin)
    known = {int(q) for q in TRAITS}
    for qt in range(-1, 45):
        assert bool(lib.er_supports(qt)) == (qt in known), qt
