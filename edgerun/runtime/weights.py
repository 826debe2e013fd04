"""CPU weights in transparent huge pages.

A GGUF file is memory-mapped with 4 KiB pages. Decode streams every weight once per token,
and on the development machine the page walks of a 4 KiB mapping cost about a fifth of the
read bandwidth (Q6_K output head, 2 threads: 32.5 GB/s from the file mapping, 40.0 GB/s from
2 MiB pages, scripts/profile_decode.py). So the runner copies the weights the CPU multiplies by
into one anonymous mapping advised ``MADV_HUGEPAGE``.

The copy is private memory that the kernel cannot drop like page cache, so it is skipped when
the weights would take more than half of the memory available, where huge pages are not
offered (not Linux, or transparent huge pages off), or when ``EDGERUN_HUGEPAGES=0``.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterable

import numpy as np

from edgerun.backends.base import QTensor

HUGE = 2 << 20
_ALIGN = 64


def _thp_mode() -> str:
    """'always', 'madvise' or 'never' (also when the kernel does not say)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "never"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return "never"


def _available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unreadable: assume plenty is not known
        return 0


def hugepages_wanted(total_bytes: int) -> bool:
    """Whether weights of ``total_bytes`` should be moved into huge pages on this machine."""
    if os.environ.get("EDGERUN_HUGEPAGES", "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    if not hasattr(mmap, "MADV_HUGEPAGE") or _thp_mode() == "never" or total_bytes <= 0:
        return False
    return 2 * total_bytes <= _available_bytes()


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _huge_buffer(nbytes: int) -> tuple[np.ndarray, int]:
    """A new anonymous mapping advised ``MADV_HUGEPAGE`` as bytes, and the offset of its first 2 MiB
    boundary (``nbytes`` fit after it). Raises OSError or ValueError when no mapping can be made."""
    mm = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mm.madvise(mmap.MADV_HUGEPAGE)
    buf = np.frombuffer(mm, np.uint8)
    return buf, (-buf.ctypes.data) % HUGE


class PinJob:
    """A copy of tensors' data into one huge-page mapping, made now or by a background thread.

    Each distinct array is copied once (a tied embedding/output table is one tensor twice). The
    copies replace the tensors' data only in :meth:`apply`, which the owner calls between steps,
    so a forward pass never sees a half-swapped model. The new arrays keep the mapping alive;
    the old file-backed views are dropped.

    In the background the copy costs the load nothing: on a long-running machine whose memory
    is fragmented the kernel compacts memory for every 2 MiB page it hands out, and the copy of
    the 0.5B's 392 MB took 2.5 s there (0.45 s on a fresh one).
    """

    def __init__(self, tensors: Iterable[QTensor], background: bool = False, tiles: bool = False,
                 pin: bool = True) -> None:
        uniq: dict[int, QTensor] = {}
        for t in tensors:
            uniq.setdefault(id(t), t)
        self._todo = [t for t in uniq.values() if isinstance(t.data, np.ndarray) and t.data.nbytes > 0]
        self._sizes = [_aligned(t.data.nbytes) for t in self._todo]
        self.total = sum(self._sizes)
        self.tile_bytes = 0
        self._pairs: list[tuple[QTensor, np.ndarray]] = []
        self._done = threading.Event()
        self._applied = False
        self._pin = pin and bool(self._todo) and hugepages_wanted(self.total)
        self._tiles = tiles
        if not self._pin:
            self.total = 0
        if not self._pin and not tiles:
            self._done.set()
        elif background:
            threading.Thread(target=self._work, name="edgerun-hugepages", daemon=True).start()
        else:
            self._work()

    def _work(self) -> None:
        try:
            if self._pin:
                self._copy()
            if self._tiles:
                self.tile_bytes = build_tiles(self._final_arrays())
        finally:
            self._todo = []  # the job holds no weights once done (they go with their owner)
            self._done.set()

    def _final_arrays(self) -> list[tuple[QTensor, np.ndarray]]:
        """Each tensor with the array that will hold its data: its copy, or its own."""
        made = {id(t): a for t, a in self._pairs}
        return [(t, made.get(id(t), t.data)) for t in self._todo]

    def _copy(self) -> None:
        try:
            buf, off = _huge_buffer(self.total)
            pairs = []
            for t, size in zip(self._todo, self._sizes, strict=True):
                src = t.data
                dst = np.ndarray(src.shape, src.dtype, buffer=buf, offset=off)
                np.copyto(dst, src)  # numpy drops the GIL for the copy
                pairs.append((t, dst))
                off += size
            self._pairs = pairs
        except (OSError, ValueError):  # no mapping: the weights stay where they are
            self.total = 0

    def ready(self) -> bool:
        """Whether the copy has finished (or was not made)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the copy has finished; False on timeout."""
        return self._done.wait(timeout)

    def apply(self) -> int:
        """Swap the copies in once they are ready; returns the bytes moved (0: none, or not yet)."""
        if self._applied or not self._done.is_set():
            return 0
        self._applied = True
        for t, dst in self._pairs:
            t.data = dst
        self._pairs = []
        return self.total


def build_tiles(pairs: Iterable[tuple[QTensor, np.ndarray]]) -> int:
    """Batch tiles (native/tiles.h) for each (tensor, array that will hold its data) that gets them.

    The tiles are a second, batch-friendly copy of the Q4_0 / Q5_0 / Q8_0 / Q4_K / Q6_K matrices:
    the native kernels read them for 2+ sequences a step (Q6_K: 3+). 8-sequence steps: 0.5B 35.8
    -> 24.5 ms, 1.5B 122.9 -> 68.9 ms. They live in one huge-page mapping and are registered for
    as long as their array lives. Skipped, returning 0, without the native kernels or when the copy
    would take more than half of the memory available. Returns the bytes of tiles made."""
    from edgerun.backends import native

    if not native.available():
        return 0
    todo, seen = [], set()
    for t, arr in pairs:
        size = native.tiles_size(t.qtype, t.n, t.k) if isinstance(arr, np.ndarray) else 0
        if size and id(arr) not in seen:
            seen.add(id(arr))
            todo.append((t, arr, _aligned(size), size))
    total = sum(s for _, _, s, _ in todo)
    if not total or 2 * total > _available_bytes():
        return 0
    try:
        buf, off = _huge_buffer(total)
    except (OSError, ValueError):  # no mapping: batches decode the rows as before
        return 0
    made = 0
    for t, arr, span, size in todo:
        made += native.add_tiles(t.qtype, arr, t.k, buf[off:off + size])
        off += span
    return made


def pin_in_hugepages(tensors: Iterable[QTensor]) -> int:
    """Move the data of ``tensors`` into one huge-page mapping now; returns the bytes moved (0: none)."""
    return PinJob(tensors).apply()


__all__ = ["PinJob", "build_tiles", "hugepages_wanted", "pin_in_hugepages"]
