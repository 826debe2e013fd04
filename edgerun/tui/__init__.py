"""The `edgerun chat` terminal UI. Importing this package is cheap: Textual loads on run."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `edgerun chat` options."""
    p.add_argument("-m", "--model", default=None,
                   help="catalog name or .gguf path (default: the catalog's default model; "
                        "with --url: the server's model id)")
    p.add_argument("--url", default=None, help="talk to an OpenAI-compatible server instead, e.g. "
                   "http://127.0.0.1:8080")
    p.add_argument("--api-key", default=None, help="API key for --url")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the in-process engine")
    p.add_argument("--ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    from edgerun.cli import add_placement_args

    add_placement_args(p)


def _run(args: argparse.Namespace) -> int:
    from edgerun.tui.app import run

    return run(args)


def register(sub: Any) -> None:
    """Add the `chat` subcommand to an argparse subparsers object."""
    p = sub.add_parser("chat", help="chat with a model in the terminal",
                       description="Chat with a model in the terminal (Textual UI).")
    add_arguments(p)
    p.set_defaults(func=_run)
