"""Choose a CPU backend: native C kernels when built, else Numba; `reference` is the oracle."""

from __future__ import annotations

import sys

from edgerun.backends.base import Backend

BACKENDS = ("auto", "native", "numba", "reference")
_warned = False


def make_backend(name: str = "auto", threads: int = 1) -> Backend:
    """Build the named backend with `threads` worker threads."""
    global _warned
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    if name in ("auto", "native"):
        try:
            from edgerun.backends import native

            ok = native.available()
        except ImportError:
            ok = False
        if ok:
            be = native.NativeBackend()
            be.set_threads(threads)
            return be
        if name == "native":
            raise RuntimeError("the native kernel library is not built (pip install -e . with a C compiler)")
        if not _warned:
            print("edgerun: native kernels unavailable, using the Numba kernels", file=sys.stderr)
            _warned = True
    if name == "reference":
        from edgerun.backends.reference import ReferenceBackend

        be = ReferenceBackend()
    else:
        from edgerun.backends.numba_cpu import NumbaBackend

        be = NumbaBackend()
    be.set_threads(threads)
    return be
