"""The speculative-decoding command-line flags (a module of their own so that building the CLI
parser does not import numpy; serving/speculative.py turns them into a Speculator)."""

from __future__ import annotations

import argparse


def add_speculative_args(p: argparse.ArgumentParser) -> None:
    """The speculative-decoding flags shared by run, bench, serve (and chat)."""
    g = p.add_argument_group("speculative decoding (lossless)")
    g.add_argument("--draft-model", default=None, metavar="NAME|PATH",
                   help="a small model with the same vocabulary proposes tokens the model verifies "
                        "in one batched step")
    g.add_argument("--lookup", action="store_true",
                   help="propose the continuation of the longest n-gram match in the prompt and "
                        "output (no draft model; best when the answer repeats the input)")
    g.add_argument("--draft-max", type=int, default=None, metavar="K",
                   help="most tokens proposed per step (default 8 with a draft model, 15 with "
                        "--lookup); fewer are proposed while the acceptance rate is low")
