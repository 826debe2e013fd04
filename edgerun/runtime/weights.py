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


def pin_in_hugepages(tensors: Iterable[QTensor]) -> int:
    """Move the data of ``tensors`` into one huge-page mapping; returns the bytes moved (0: none).

    Each distinct array is copied once (a tied embedding/output table is one tensor twice).
    The new arrays keep the mapping alive; the old file-backed views are dropped.
    """
    uniq: dict[int, QTensor] = {}
    for t in tensors:
        uniq.setdefault(id(t), t)
    todo = [t for t in uniq.values() if isinstance(t.data, np.ndarray) and t.data.nbytes > 0]
    sizes = [-(-t.data.nbytes // _ALIGN) * _ALIGN for t in todo]
    total = sum(sizes)
    if not todo or not hugepages_wanted(total):
        return 0
    try:
        mm = mmap.mmap(-1, total + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return 0
    buf = np.frombuffer(mm, np.uint8)
    off = (-buf.ctypes.data) % HUGE
    for t, size in zip(todo, sizes, strict=True):
        src = t.data
        dst = np.ndarray(src.shape, src.dtype, buffer=buf, offset=off)
        np.copyto(dst, src)
        t.data = dst
        off += size
    return total


__all__ = ["hugepages_wanted", "pin_in_hugepages"]
