"""``edgerun serve -m MODEL``: the OpenAI-compatible HTTP server (edgerun/server/app.py) over the engine."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from edgerun.cli.args import (
    LOG_LEVELS,
    CLIError,
    add,
    add_model_args,
    load_runner,
    log_level,
    port,
    positive_int,
)
from edgerun.server.options import add_server_safety_args
from edgerun.serving.spec_flags import add_speculative_args


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``serve``."""
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with streaming and /metrics")
    add_model_args(p, ctx={"help": "context length per sequence (default %(default)s)"})
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    p.add_argument("--port", type=port, default=8080, help="TCP port, 1-65535 (default %(default)s)")
    add(p, "api_key", api_key={"help": "require 'Authorization: Bearer KEY'"})
    p.add_argument("--max-running", type=positive_int, default=8, help="sequences batched together")
    p.add_argument("--max-queue", type=positive_int, default=64,
                   help="waiting requests before new ones get 429 (at least 1)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=512, help="token budget per engine step")
    p.add_argument("--no-batch-tiles", action="store_true",
                   help="skip the second, batch-friendly copy of the Q4_0/Q5_0/Q8_0/Q4_K/Q6_K matrices "
                        "(saves their size in memory; batches of 2+ sequences run slower)")
    p.add_argument("--kv-blocks", type=positive_int, default=None,
                   help="KV cache blocks of 16 tokens (default: two full contexts)")
    p.add_argument("--log-level", type=log_level, default="info", metavar="LEVEL",
                   help=f"uvicorn's log level: {', '.join(LOG_LEVELS)} (default %(default)s)")
    add_server_safety_args(p)
    add_speculative_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model, start the engine thread, serve until Ctrl+C."""
    import uvicorn

    from edgerun.server.app import create_app
    from edgerun.server.guard import guarded_protocol
    from edgerun.server.options import ServerSafety
    from edgerun.serving.engine import Engine
    from edgerun.serving.speculative import SpeculativeError, config_from_args, speculator_from_args

    server_class = _server_class()
    try:
        config_from_args(args)  # a bad flag fails before the model loads
    except SpeculativeError as e:
        raise CLIError(str(e)) from None
    tiles = args.max_running >= 2 and not args.no_batch_tiles
    runner = load_runner(args, num_blocks=args.kv_blocks, batch_tiles=tiles)
    try:
        spec = speculator_from_args(args, runner, batch_tiles=tiles)
    except SpeculativeError as e:
        raise CLIError(str(e)) from None
    path = runner.path
    name = getattr(runner, "model_name", None) or str(args.model)
    engine = Engine(runner, max_running=args.max_running, max_queue=args.max_queue,
                    max_batch_tokens=args.max_batch_tokens, deterministic=args.deterministic,
                    speculative=spec).start()
    safety = ServerSafety.from_args(args)
    try:
        app = create_app(engine, name, api_key=args.api_key,
                         aliases=(str(args.model), path.stem, path.name), safety=safety)
        print(f"edgerun: serving {name} on http://{args.host}:{args.port}/v1 (ctx {runner.n_ctx})",
              flush=True)
        server = server_class(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                             http=guarded_protocol(safety.header_timeout)))
        server.run()
    finally:
        engine.shutdown()
    if server.interrupted:
        # uvicorn shut down gracefully on Ctrl+C and re-raised it inside asyncio.run, which
        # swallows it; say it here so `serve` exits 130 like every other command
        raise KeyboardInterrupt
    return 0 if server.started else 1  # uvicorn logged why it could not start


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, remembering whether Ctrl+C stopped it."""

        interrupted = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGINT:
                self.interrupted = True
            super().handle_exit(sig, frame)

    return Server
