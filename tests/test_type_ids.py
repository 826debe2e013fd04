"""Quant type ids are the on-disk GGML ids, defined for Python in edgerun/quant/traits.py only: the C
sources, the CUDA sources and the backends must agree with that table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as T

from edgerun.backends import native as nv
from edgerun.backends import numba_cpu
from edgerun.quant import traits

NATIVE = Path(__file__).resolve().parents[1] / "native"


def _c_sources(*globs: str) -> dict[Path, str]:
    return {p: p.read_text() for g in globs for p in sorted(NATIVE.rglob(g)) if "cuda" not in p.parts}


def _cuda_sources() -> dict[Path, str]:
    return {p: p.read_text() for g in ("*.cuh", "*.cu") for p in sorted((NATIVE / "cuda").rglob(g))}


_TYPE = r"(F32|F16|BF16|Q\d_[01K])"


def _ids(sources: dict[Path, str], pattern: str) -> dict[str, list[tuple[int, Path]]]:
    found: dict[str, list[tuple[int, Path]]] = {}
    for path, text in sources.items():
        for m in re.finditer(pattern, text):
            found.setdefault(m[1], []).append((int(m[2]), path))
    return found


def _check(found: dict[str, list[tuple[int, Path]]], where: str) -> None:
    assert found, f"no type ids found in the {where} sources"
    for name, uses in found.items():
        for qid, path in uses:
            assert qid == int(T[name]), f"{path}: {name} = {qid}, GGML (and traits.py) say {int(T[name])}"
    missing = {traits.type_name(q) for q in traits.SUPPORTED} - set(found)
    assert not missing, f"{where}: no id for {sorted(missing)}"


def test_c_type_ids_match_traits() -> None:
    """``ER_Q4_K = 12``-style enumerators (or defines) in native/ (C, not CUDA)."""
    src = _c_sources("*.h", "*.c")
    prefix = r"\bER_(?:TYPE_|QT_|T_)?"  # ER_Q4_K today; the spellings a reorganised header may take
    found = _ids(src, prefix + _TYPE + r"\s*=\s*(\d+)")
    for name, uses in _ids(src, r"#define\s+" + prefix[2:] + _TYPE + r"\s+(\d+)").items():
        found.setdefault(name, []).extend(uses)
    _check(found, "C")


def test_cuda_type_ids_match_traits() -> None:
    """``#define QT_Q4_K 12`` in native/cuda, and each kernel suffix is traits.TYPE_SUFFIX's."""
    src = _cuda_sources()
    _check(_ids(src, r"#define\s+QT_" + _TYPE + r"\s+(\d+)"), "CUDA")
    define = re.compile(r"DEFINE_TYPE\((\w+),\s*QT_(\w+)\)")
    suffixes = {m[2]: m[1] for text in src.values() for m in define.finditer(text)}
    assert suffixes, "no DEFINE_TYPE lines found in native/cuda"
    for name, sfx in suffixes.items():
        assert traits.TYPE_SUFFIX[int(T[name])] == sfx, name


def test_python_backends_take_traits_ids() -> None:
    assert numba_cpu.SUPPORTED is traits.SUPPORTED
    for name in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"):
        assert getattr(traits, name) == int(T[name]) == getattr(numba_cpu, name)
    assert traits.FLOAT_TYPES | traits.QUANT_TYPES == traits.SUPPORTED == frozenset(traits.TRAITS)
    assert traits.type_name(12) == "Q4_K" and traits.type_name(99) == "99"


@pytest.mark.skipif(not nv.available(), reason="native kernels not built")
def test_library_supports_every_traits_type() -> None:
    from edgerun.backends.native import binding

    for qt in sorted(traits.SUPPORTED):
        assert binding.lib.er_supports(qt), traits.type_name(qt)
    assert not binding.lib.er_supports(99)
