"""``edgerun tokenize -m MODEL (-p TEXT | -f FILE) [--json]``: print a text's token ids."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgerun.cli.args import CLIError, add, resolve


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``tokenize``."""
    p = sub.add_parser("tokenize", help="print the token ids of a text (the model's BOS rule applies)")
    add(p, "model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="the text")
    src.add_argument("-f", "--file", help="a UTF-8 text file")
    p.add_argument("--no-parse-special", action="store_true",
                   help="treat control-token text such as <|im_start|> as plain text")
    add(p, "json", json={"help": 'print {"tokens": [...]}'})
    return p


def run(args: argparse.Namespace) -> int:
    """Tokenize with the GGUF's own vocabulary (no weights are read)."""
    from edgerun.quant.gguf_file import GGUFError
    from edgerun.text.tokenizer import format_tokens, tokenize_text
    from edgerun.text.vocab import VocabError

    if args.file is not None:
        f = Path(args.file)
        if not f.is_file():
            raise CLIError(f"file not found: {f}")
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CLIError(f"{f} is not UTF-8 text") from None
    else:
        text = args.prompt
    path = resolve(args.model)
    try:
        tok, ids = tokenize_text(path, text, parse_special=not args.no_parse_special)
    except (GGUFError, VocabError) as e:
        raise CLIError(f"cannot tokenize with {path}: {e}") from None
    print(format_tokens(tok, ids, args.json))
    return 0
