"""Choose a CPU backend: the one place that decides what runs when the native kernels cannot.

"auto" takes the native C kernels when their library is loaded, else the Numba kernels, and says
so once per process on stderr with the reason (not built, ``EDGERUN_NO_NATIVE``, a stale build or
an ABI mismatch: ``edgerun.backends.native.load_error()``). "native" refuses to run without the
library; "numba" and "reference" (the slow oracle) are taken as asked.
"""

from __future__ import annotations

import sys

from edgerun.backends.base import Backend

BACKENDS = ("auto", "native", "numba", "reference")
_warned = False


def native_fallback_warning(reason: str | None) -> None:
    """Print, once per process, that the native kernels are unavailable and why."""
    global _warned
    if not _warned:
        print(f"edgerun: native kernels unavailable ({reason}), using the Numba kernels", file=sys.stderr)
        _warned = True


def make_backend(name: str = "auto", threads: int = 1) -> Backend:
    """Build the named backend with `threads` worker threads."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    be: Backend
    if name in ("auto", "native"):
        from edgerun.backends import native

        if native.available():
            be = native.NativeBackend()
            be.set_threads(threads)
            return be
        if name == "native":
            raise RuntimeError(f"the native kernel library is unavailable ({native.load_error()}); "
                               "build it with pip install -e . and a C compiler")
        native_fallback_warning(native.load_error())
    if name == "reference":
        from edgerun.backends.reference import ReferenceBackend

        be = ReferenceBackend()
    else:
        from edgerun.backends.numba_cpu import NumbaBackend

        be = NumbaBackend()
    be.set_threads(threads)
    return be
