"""The one-file binary's launcher (packaging/edgerun_main.py): an embedded model is the default `-m`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _launcher():
    spec = importlib.util.spec_from_file_location("edgerun_main", ROOT / "packaging" / "edgerun_main.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_embedded_model_rewrites_model_argument(tmp_path: Path) -> None:
    m = _launcher()
    emb = tmp_path / "m.gguf"
    models = {"m.gguf": emb, "m": emb, "qwen": emb}
    assert m._rewrite(["run", "-p", "hi"], models) == ["run", "-m", str(emb), "-p", "hi"]
    assert m._rewrite(["chat"], models) == ["chat", "-m", str(emb)]
    assert m._rewrite(["run", "-m", "qwen", "-p", "x"], models) == ["run", "-m", str(emb), "-p", "x"]
    assert m._rewrite(["run", "-m", "other.gguf"], models) == ["run", "-m", "other.gguf"]
    assert m._rewrite(["list"], models) == ["list"]
    assert m._rewrite(["run", "-p", "hi"], {}) == ["run", "-p", "hi"]


def test_embedded_models_are_found_with_their_catalog_name(tmp_path: Path, monkeypatch) -> None:
    m = _launcher()
    d = tmp_path / "embedded_models"
    d.mkdir()
    (d / "qwen-q4.gguf").write_bytes(b"GGUF")
    (d / "qwen-q4.name").write_text("qwen2.5-coder-0.5b-instruct\n")
    monkeypatch.setattr(m.sys, "_MEIPASS", str(tmp_path), raising=False)
    found = m._embedded()
    assert found["qwen2.5-coder-0.5b-instruct"] == found["qwen-q4"] == d / "qwen-q4.gguf"
