"""The native binding's contract: status codes to exceptions, the ABI check, the layer table, and
the optional backend abilities (protocols asked through ``implements``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from edgerun.backends import native as nv
from edgerun.backends import registry
from edgerun.backends.base import (
    Backend,
    BatchTiles,
    FusedFFN,
    FusedLayers,
    FusedNorm,
    FusedStep,
    QTensor,
    implements,
)
from edgerun.backends.native import binding
from edgerun.backends.native.errors import Status, status_error
from edgerun.backends.numba_cpu import NumbaBackend
from edgerun.backends.reference import ReferenceBackend
from edgerun.models.base import Layer
from edgerun.models.registry import model_class
from edgerun.quant.gguf_file import GGUFFile
from tests.synth import write_model

HEADER = Path(__file__).resolve().parents[1] / "native" / "include" / "edgerun.h"
needs_lib = pytest.mark.skipif(not nv.available(), reason=f"native kernels not built ({nv.load_error()})")


# ------------------------------------------------------------------ status codes


def test_status_and_abi_match_the_header() -> None:
    """errors.Status and binding.ABI_VERSION spell what native/include/edgerun.h defines."""
    text = HEADER.read_text()
    enum = re.search(r"typedef enum \{(.*?)\}\s*er_status;", text, re.S)
    assert enum, "er_status enum not found in edgerun.h"
    codes = {m[1]: int(m[2]) for m in re.finditer(r"ER_(?:E_)?(\w+)\s*=\s*(-?\d+)", enum[1])}
    assert codes == {s.name: s.value for s in Status}
    abi = re.search(r"#define\s+ER_ABI_VERSION\s+(\d+)", text)
    assert abi and int(abi[1]) == binding.ABI_VERSION


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        pytest.param(Status.UNSUPPORTED, (NotImplementedError, ValueError), id="unsupported"),
        pytest.param(Status.NOMEM, (MemoryError,), id="nomem"),
        pytest.param(Status.SHAPE, (ValueError,), id="shape"),
        pytest.param(Status.INVALID, (ValueError,), id="invalid"),
    ],
)
def test_status_error_classes(status: Status, cls: tuple[type, ...]) -> None:
    e = status_error(status, "er_matmul", "words", "K=100, Q4_K")
    assert isinstance(e, nv.NativeError) and all(isinstance(e, c) for c in cls)
    assert type(e).status == status
    assert str(e) == "er_matmul: words (K=100, Q4_K)"


def test_unknown_status_still_raises_with_its_number() -> None:
    e = status_error(-99, "er_ffn", "unknown native error")
    assert type(e) is nv.NativeError and "-99" in str(e) and str(e).startswith("er_ffn: ")


@needs_lib
@pytest.mark.parametrize("status", [s for s in Status if s != Status.OK], ids=lambda s: s.name.lower())
def test_library_names_every_status(status: Status) -> None:
    """er_status_str has its own words for every code of the header (not the unknown-code text)."""
    text = binding.lib.er_status_str(int(status)).decode()
    assert text and "unknown" not in text
    assert binding.lib.er_status_str(-99).decode() != text


@needs_lib
def test_c_status_becomes_a_message() -> None:
    """Codes returned by the C entry points themselves (past the Python checks) name the call."""
    x = np.zeros((1, 100), np.float32)
    w = np.zeros((2, 144), np.uint8)
    out = np.zeros((1, 2), np.float32)
    rc = binding.lib.er_matmul(int(T.Q4_K), binding.ptr(w), 144, 2, 100, binding.ptr(x), 1, binding.ptr(out))
    assert rc == Status.SHAPE
    want = r"^er_matmul: size not a multiple of the block size.*\(K=100, Q4_K\)$"
    with pytest.raises(nv.NativeShapeError, match=want):
        raise binding.fail(rc, "er_matmul", "K=100, Q4_K")
    rc = binding.lib.er_get_rows(99, binding.ptr(w), 144, 256, binding.ptr(np.zeros(1, np.int64)), 1,
                                 binding.ptr(np.zeros((1, 256), np.float32)))
    assert rc == Status.UNSUPPORTED
    with pytest.raises(nv.NativeUnsupportedError, match=r"^er_get_rows: unsupported"):
        raise binding.fail(rc, "er_get_rows", "type 99")


@needs_lib
def test_python_checks_name_the_call_and_type() -> None:
    want = r"^er_matmul: size not a multiple of the block size \(K=100, Q4_K"
    with pytest.raises(nv.NativeShapeError, match=want):
        nv.matmul(int(T.Q4_K), np.zeros((2, 144), np.uint8), np.zeros((1, 100), np.float32))
    with pytest.raises(nv.NativeUnsupportedError, match="er_get_rows: unsupported quant type 99"):
        nv.get_rows(99, np.zeros((2, 18), np.uint8), np.array([0]), 32)
    with pytest.raises(nv.NativeShapeError, match=r"Q8_0 weight must be uint8 \(N, 34\)"):
        nv.matmul(int(T.Q8_0), np.zeros((2, 36), np.uint8), np.zeros((1, 32), np.float32))


# ------------------------------------------------------------------ refusing a library


@pytest.fixture
def reload_after(monkeypatch: pytest.MonkeyPatch):
    """Undo the test's monkeypatching, then load the real library again."""
    monkeypatch.setattr(registry, "_warned", False)
    was = nv.available()
    yield monkeypatch
    monkeypatch.undo()
    binding.load()
    assert nv.available() == was


@needs_lib
def test_abi_mismatch_means_unavailable_with_one_warning(reload_after, capsys) -> None:
    reload_after.setattr(binding, "ABI_VERSION", binding.ABI_VERSION + 1)
    assert binding.load() is False and not nv.available()
    reason = nv.load_error()
    assert f"ABI version {binding.ABI_VERSION - 1}" in reason and f"expects {binding.ABI_VERSION}" in reason
    with pytest.raises(nv.NativeUnavailableError, match="er_matmul: native kernels unavailable .*ABI"):
        nv.matmul(int(T.Q8_0), np.zeros((2, 34), np.uint8), np.zeros((1, 32), np.float32))
    with pytest.raises(RuntimeError, match="ABI version"):
        registry.make_backend("native", 1)
    for _ in range(2):
        assert isinstance(registry.make_backend("auto", 1), NumbaBackend)
    err = capsys.readouterr().err
    assert err.count("native kernels unavailable") == 1 and "ABI version" in err


@needs_lib
def test_stale_build_is_refused(reload_after) -> None:
    """A library without an entry point the binding declares (built from older sources)."""
    reload_after.setitem(binding.SIGNATURES, "er_not_in_this_build", ([], None))
    assert binding.load() is False
    assert "stale native build" in nv.load_error() and "er_not_in_this_build" in nv.load_error()


# ------------------------------------------------------------------ abilities


ALL_ABILITIES = (FusedFFN, FusedNorm, FusedLayers, FusedStep, BatchTiles)


def test_abilities_of_the_cpu_backends() -> None:
    for be in (NumbaBackend(), ReferenceBackend()):
        assert isinstance(be, Backend)
        assert not any(implements(be, a) for a in ALL_ABILITIES), be.name


@needs_lib
def test_native_abilities_and_opting_out() -> None:
    be = nv.NativeBackend()
    assert isinstance(be, Backend) and all(implements(be, a) for a in ALL_ABILITIES)
    layers_only = type("LayersOnly", (nv.NativeBackend,), {"run_step": None})()
    assert implements(layers_only, FusedLayers) and not implements(layers_only, FusedStep)
    assert implements(layers_only, FusedFFN)


def test_abilities_are_structural() -> None:
    """Any class with the method has the ability; nothing is keyed on backend names."""

    class OwnNorm:
        def rms_norm(self, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
            return x

    assert implements(OwnNorm(), FusedNorm) and not implements(OwnNorm(), FusedFFN)


# ------------------------------------------------------------------ layer table


@needs_lib
def test_layer_table_from_the_layer_dataclass(tmp_path) -> None:
    """Every er_layer_t field comes from the model's Layer / ModelArgs."""
    path = write_model(tmp_path / "m.gguf", arch="gemma3", dim=64, ffn=96, n_heads=2, n_kv=1, window=3)
    gf = GGUFFile(path)
    m = model_class(gf.architecture)(gf, nv.NativeBackend(), 97)
    table, keep = nv.layer_table(m)
    a = m.args
    assert len(table) == a.n_layers
    for i, (e, ly) in enumerate(zip(table, m.layers, strict=True)):
        assert isinstance(ly, Layer)
        for tag, w in (("q", ly.wq), ("k", ly.wk), ("v", ly.wv), ("o", ly.wo), ("g", ly.w_gate),
                       ("u", ly.w_up), ("d", ly.w_down)):
            assert getattr(e, "qt_" + tag) == int(w.qtype)
            assert getattr(e, "rb_" + tag) == w.data.strides[0]
            assert getattr(e, "w" + tag) == w.data.ctypes.data  # the array itself, not a copy
        assert (e.post_ffn_norm is None) == (ly.post_ffn_norm is None)
        assert (e.q_norm is None) == (ly.q_norm is None) and (e.bq is None) == (ly.bq is None)
        assert (e.n_heads, e.n_kv_heads, e.head_dim) == (a.n_heads, a.n_kv_heads, a.head_dim)
        assert (e.window, e.ffn_dim, e.act) == (a.windows[i], a.ffn_dim, nv.ACT[a.activation])
        assert e.rope_base == a.rope_bases[i] and e.attn_scale == pytest.approx(a.attn_scale)
    assert keep  # the converted vectors and checked matrices the pointers need
    ly = m.layers[0]
    wk = ly.wk
    ly.wk = QTensor(wk.name, wk.qtype, wk.k, wk.n * 2, np.zeros((wk.n * 2, wk.data.shape[1]), np.uint8))
    with pytest.raises(ValueError, match=re.escape(wk.name) + r": shape .* does not fit its layer"):
        nv.layer_table(m)
    ly.wk, m.layers[1].w_up = wk, None  # what an MoE layer looks like to the table
    with pytest.raises(nv.NativeArgumentError, match="layer 1 lacks one"):
        nv.layer_table(m)
