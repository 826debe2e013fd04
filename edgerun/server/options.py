"""Safety options of `edgerun serve`: body limits, slow-client timeouts, Host/Origin and CORS.

`add_server_safety_args(parser)` adds the flags; `ServerSafety.from_args(args)` reads them.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

__all__ = ["ServerSafety", "add_server_safety_args", "parse_size"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'4M', '512k', '1048576' -> bytes (binary units); argparse type."""
    m = re.fullmatch(r"\s*(\d{1,12})\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4M, 512k or a byte count)")
    n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if n < 1024:
        raise argparse.ArgumentTypeError(f"size {text!r} is below 1k: no request would fit")
    return n


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(v) or v <= 0 or v > 86400:
        raise argparse.ArgumentTypeError(f"seconds must be in (0, 86400], got {text!r}")
    return v


def _origin(text: str) -> str:
    if text == "*" or re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]+", text):
        return text.rstrip("/")
    raise argparse.ArgumentTypeError(f"not an origin: {text!r} (scheme://host[:port], or *)")


@dataclass(frozen=True)
class ServerSafety:
    """Limits and checks applied in front of every endpoint (see server/guard.py)."""

    max_body: int = 4 << 20  # bytes; larger bodies get 413 before they are read
    header_timeout: float = 10.0  # seconds for a client to send a request's headers
    body_timeout: float = 30.0  # seconds for a client to send a request's body
    cors_origins: tuple[str, ...] = ()  # CORS is on only when this is non-empty ("*": any)
    bind_host: str = "127.0.0.1"  # Host/Origin checks apply when this is a loopback address
    allowed_hosts: tuple[str, ...] = ()  # extra Host names accepted on a loopback bind

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerSafety:
        return cls(max_body=args.max_body, header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                   cors_origins=tuple(args.cors_origin or ()), bind_host=args.host,
                   allowed_hosts=tuple(args.allow_host or ()))


def add_server_safety_args(p: argparse.ArgumentParser) -> None:
    """Add --max-body, --header-timeout, --body-timeout, --cors-origin, --allow-host, --deterministic."""
    d = ServerSafety()
    p.add_argument("--max-body", type=parse_size, default=d.max_body, metavar="SIZE",
                   help="largest request body (default 4M); bigger ones get 413 before they are read")
    p.add_argument("--header-timeout", type=_seconds, default=d.header_timeout, metavar="S",
                   help="close connections that take longer to send their headers (default 10)")
    p.add_argument("--body-timeout", type=_seconds, default=d.body_timeout, metavar="S",
                   help="answer 408 to clients that take longer to send a body (default 30)")
    p.add_argument("--cors-origin", action="append", type=_origin, metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (repeatable; '*' for any); turns CORS on. "
                        "On a loopback bind other origins are refused")
    p.add_argument("--deterministic", action="store_true",
                   help="greedy and seeded answers independent of what a request is batched with and of "
                        "prefix-cache hits (steps of at most 16 rows: prefill runs slower)")
    p.add_argument("--allow-host", action="append", metavar="HOST",
                   help="on a loopback bind, accept this Host header too (repeatable; by default only "
                        "localhost, 127.0.0.1 and [::1], against DNS rebinding)")
