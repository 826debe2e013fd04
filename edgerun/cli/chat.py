"""``edgerun chat``: the Textual chat app (edgerun/tui/), with the engine in-process or over HTTP."""

from __future__ import annotations

import argparse
from typing import Any

from edgerun.cli.args import LOAD, add


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``edgerun chat`` options (also used by ``python -m edgerun.tui.app``)."""
    add(p, "model", model={"required": False, "default": None,
                           "help": "catalog name or .gguf path (default: the catalog's default model; "
                                   "with --url: the server's model id)"})
    add(p, "url", "api_key", url={"help": "talk to an OpenAI-compatible server instead, e.g. "
                                          "http://127.0.0.1:8080"},
        api_key={"help": "API key for --url"})
    # no default context here: the app uses --ctx when given, else the saved setting (F4)
    add(p, "deterministic")
    add(p, *LOAD, ctx={"default": None, "help": "context size in tokens (default: the chat settings')"})


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``chat``."""
    p = sub.add_parser("chat", help="chat with a model in the terminal",
                       description="Chat with a model in the terminal (Textual UI).")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Start the app (Textual is imported here, not at parse time)."""
    from edgerun.tui.app import run as run_app

    return run_app(args)
