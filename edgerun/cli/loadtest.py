"""``edgerun loadtest --url URL``: throughput and latency against concurrency for any OpenAI-compatible
server."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from edgerun.cli.args import CLIError, add, positive_int, positive_int_list


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``loadtest``."""
    p = sub.add_parser("loadtest", help="throughput/latency sweep against an OpenAI-compatible server")
    add(p, "url", url={"default": "http://127.0.0.1:8080", "help": "server base URL (without /v1)"})
    p.add_argument("--concurrency", type=positive_int_list, default=[1, 2, 4, 8, 16], metavar="N,N,...",
                   help="comma-separated levels (default 1,2,4,8,16)")
    p.add_argument("--requests", type=positive_int, default=32,
                   help="requests per level (at least the concurrency)")
    p.add_argument("--prompt-tokens", type=positive_int, default=128, help="approximate prompt length")
    p.add_argument("--max-tokens", type=positive_int, default=64, help="tokens to generate per request")
    add(p, "model", "api_key", "json",
        model={"required": False, "default": None, "help": "model name (default: the server's first)"},
        json={"help": "print JSON instead of a table"})
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write a throughput/TTFT plot")
    return p


def run(args: argparse.Namespace) -> int:
    """Sweep the levels; exit 1 when the server cannot be reached or every request failed."""
    import importlib.util

    import httpx

    from edgerun.loadtest import format_table, plot
    from edgerun.loadtest import run as sweep

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--plot needs matplotlib: pip install 'edgerun[plots]'")
    try:
        levels = sweep(args.url, args.concurrency, args.requests, args.prompt_tokens, args.max_tokens,
                       args.model, args.api_key)
    except httpx.HTTPError as e:
        print(f"edgerun: error: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(lv) for lv in levels], indent=2))
    else:
        print(format_table(levels))
    if args.plot:
        title = f"{args.url}  prompt ~{args.prompt_tokens} tok, gen {args.max_tokens} tok"
        plot(levels, args.plot, title=title)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 1 if all(lv.errors == lv.requests for lv in levels) else 0
