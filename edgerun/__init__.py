"""edgerun: a local LLM runner (GGUF models, native CPU kernels, hybrid CPU-GPU placement).

``edgerun.__version__`` is read from the installed package's metadata (pyproject.toml's version is
the one place it is written), only when asked, so importing edgerun stays cheap.
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("edgerun")
        except PackageNotFoundError:  # a source tree on sys.path, never installed
            return "0+unknown"
    raise AttributeError(f"module 'edgerun' has no attribute {name!r}")
