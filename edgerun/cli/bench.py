"""``edgerun bench -m MODEL``: prefill/decode tokens/s, optionally against llama.cpp in the same run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgerun.cli.args import CLIError, add, positive_int
from edgerun.serving.spec_flags import add_speculative_args


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``bench``."""
    p = sub.add_parser("bench", help="measure prefill/decode tokens/s (optionally vs llama.cpp)")
    add(p, "model", "threads", "backend")
    p.add_argument("--prompt-tokens", type=positive_int, default=201,
                   help="prompt length (default %(default)s)")
    p.add_argument("--gen-tokens", type=positive_int, default=64,
                   help="tokens generated (default %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs; medians reported")
    p.add_argument("--vs", choices=["llamacpp"], default=None, help="measure llama.cpp in the same run")
    add(p, "json")
    add_speculative_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; progress on stderr, the table (or JSON) on stdout."""
    import importlib.util

    from edgerun.bench import format_table, run_bench
    from edgerun.catalog import ModelError
    from edgerun.runtime.runner import default_threads

    if args.vs == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise CLIError("--vs llamacpp needs llama-cpp-python: pip install 'edgerun[reference]'")
    threads = args.threads or default_threads()

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr)

    draft, lookup = args.draft_model, bool(args.lookup)
    if draft or lookup or args.draft_max is not None:
        from edgerun.bench import format_spec_table, run_spec_bench
        from edgerun.serving.speculative import SpeculativeError

        if not (draft or lookup):
            raise CLIError("--draft-max needs --draft-model or --lookup")
        try:
            res = run_spec_bench(args.model, threads, draft, lookup, args.draft_max,
                                 args.gen_tokens, args.vs, args.repeats, args.backend, log)
        except (ModelError, SpeculativeError) as e:
            raise CLIError(str(e)) from None
        print(json.dumps(res) if args.json else format_spec_table(res))
        return 0
    try:
        res = run_bench(args.model, threads, args.prompt_tokens, args.gen_tokens, args.vs, args.repeats,
                        args.backend, log)
    except ModelError as e:
        raise CLIError(str(e)) from None
    print(json.dumps(res) if args.json else format_table(res))
    return 0
