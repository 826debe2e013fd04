"""The native library's status codes and the exceptions they become: the one place they are mapped.

``native/include/edgerun.h`` defines ``er_status``; every entry point that can fail returns one.
:func:`status_error` turns a code into an exception whose message names the entry point, the
library's own words for the code (``er_status_str``) and the call's sizes and types, e.g.
``er_matmul: size not a multiple of the block size (K=100, Q4_K)``. The Python-side checks before
a call raise the same classes, so a caller catches one family whichever side found the problem.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """``er_status`` of native/include/edgerun.h (tests/test_native_binding.py compares the two)."""

    OK = 0
    UNSUPPORTED = -1  # quant type or operation this build has no kernel for
    NOMEM = -2  # an allocation failed
    SHAPE = -3  # a size is not a multiple of the type's block, or shapes disagree
    INVALID = -4  # a null pointer, negative size or out-of-range argument


class NativeError(Exception):
    """An error reported by (or found before calling) the native kernels."""

    status: Status | None = None


class NativeUnavailableError(NativeError, RuntimeError):
    """The native library is not loaded (not built, disabled, or built for another ABI)."""


class NativeUnsupportedError(NativeError, NotImplementedError, ValueError):
    """A quant type or operation the library has no kernel for (also a ValueError: a bad type id
    is a bad argument to the caller)."""

    status = Status.UNSUPPORTED


class NativeMemoryError(NativeError, MemoryError):
    """An allocation inside the library failed."""

    status = Status.NOMEM


class NativeShapeError(NativeError, ValueError):
    """A size that is not a multiple of the type's block, or shapes that disagree."""

    status = Status.SHAPE


class NativeArgumentError(NativeError, ValueError):
    """A null pointer, negative size or out-of-range argument."""

    status = Status.INVALID


_BY_STATUS: dict[int, type[NativeError]] = {
    Status.UNSUPPORTED: NativeUnsupportedError,
    Status.NOMEM: NativeMemoryError,
    Status.SHAPE: NativeShapeError,
    Status.INVALID: NativeArgumentError,
}


def status_error(status: int, fn: str, text: str, detail: str = "") -> NativeError:
    """The exception for a failed call of ``fn`` that returned ``status``.

    ``text`` is the library's description of the code (``er_status_str``), ``detail`` the sizes
    and types of the call. A code this module does not know still raises, as a plain NativeError
    that shows the number."""
    cls = _BY_STATUS.get(int(status))
    if cls is None:
        text = f"{text} (status {int(status)})"
        cls = NativeError
    return cls(f"{fn}: {text}" + (f" ({detail})" if detail else ""))


__all__ = [
    "NativeArgumentError",
    "NativeError",
    "NativeMemoryError",
    "NativeShapeError",
    "NativeUnavailableError",
    "NativeUnsupportedError",
    "Status",
    "status_error",
]
