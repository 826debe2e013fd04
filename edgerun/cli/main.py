"""Parser assembly and dispatch: exit statuses, one-line errors, Ctrl+C, missing packages.

Exit status: 0 done, 2 a user error (one line on stderr: bad flag, missing model, file that
cannot be loaded), 130 interrupted (Ctrl+C, one line), else what the subcommand returns. An
ImportError of edgerun's own code is a bug and keeps its traceback; a missing third-party package
becomes one line naming it (and the extra that installs it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from edgerun.cli.args import CLIError, Parser

#: subcommand modules under edgerun.cli, in --help order
COMMANDS = ("chat", "run", "serve", "loadtest", "perplexity", "bench", "plan", "inspect", "tokenize", "pull",
            "list")

#: third-party packages that come with an extra rather than the base install
_EXTRAS = {"cupy": "cuda", "cupy_backends": "cuda", "pytest": "test", "openai": "test"}


class _Version(argparse.Action):
    """``--version``: read the package metadata only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from edgerun import __version__

        print(f"edgerun {__version__}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    ap = Parser(prog="edgerun", description="Run GGUF language models locally.")
    ap.add_argument("--version", action=_Version)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        mod = importlib.import_module(f"edgerun.cli.{name}")
        mod.register(sub).set_defaults(func=mod.run)
    return ap


def _missing_package(e: ModuleNotFoundError, command: str) -> CLIError | None:
    top = (e.name or "").split(".")[0]
    if not top or top == "edgerun":
        return None
    extra = _EXTRAS.get(top)
    how = f"pip install 'edgerun[{extra}]'" if extra else "reinstall edgerun"
    return CLIError(f"'edgerun {command}' needs the Python package '{top}', which is not installed ({how})")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run the subcommand; returns the exit status."""
    try:
        ap = build_parser()
        args = ap.parse_args(sys.argv[1:] if argv is None else argv)
        if not getattr(args, "func", None):
            ap.print_help()
            return 2
        try:
            return int(args.func(args) or 0)
        except ModuleNotFoundError as e:
            err = _missing_package(e, args.command)
            if err is None:
                raise
            raise err from None
    except CLIError as e:
        print(f"edgerun: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgerun: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
