"""``edgerun pull NAME``: download a catalog model (prints its path)."""

from __future__ import annotations

import argparse
from typing import Any

from edgerun.cli.args import CLIError


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``pull``."""
    p = sub.add_parser("pull", help="download a catalog model")
    p.add_argument("name", help="catalog name (see edgerun list)")
    return p


def run(args: argparse.Namespace) -> int:
    """Download ``args.name`` unless it is already here; print its path."""
    from edgerun.catalog import ModelError, pull

    try:
        path = pull(args.name)
    except ModelError as e:
        raise CLIError(str(e)) from None
    print(path)
    return 0
