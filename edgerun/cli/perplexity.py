"""``edgerun perplexity -m MODEL -f FILE``: perplexity over consecutive chunks of ``--ctx`` tokens."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgerun.cli.args import CLIError, add, add_model_args, load_runner


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``perplexity``."""
    p = sub.add_parser("perplexity", help="perplexity of a text file")
    add_model_args(p, ctx={"default": 512, "help": "chunk size in tokens (default %(default)s)"})
    p.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    add(p, "json")
    return p


def run(args: argparse.Namespace) -> int:
    """Score the file chunk by chunk."""
    from edgerun.generate import perplexity

    f = Path(args.file)
    if not f.is_file():
        raise CLIError(f"file not found: {f}")
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"{f} is not UTF-8 text") from None
    runner = load_runner(args)
    ids = runner.tokenizer.encode(text)
    try:
        ppl, n, chunks = perplexity(runner, ids, args.ctx)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(json.dumps({"ppl": ppl, "tokens": n, "chunks": chunks}))
    else:
        print(f"perplexity {ppl:.4f} over {n} tokens in {chunks} chunks of {args.ctx}")
    return 0
