"""OpenAI-compatible HTTP server over the engine: chat/completions with SSE, models, metrics.

`create_app(engine, model_name, api_key=None)` builds the FastAPI app (tests use it with any
engine); `register(sub)` adds `edgerun serve`. Every error uses OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgerun.server.metrics import Metrics
from edgerun.serving.engine import Engine, QueueFullError, RequestHandle
from edgerun.serving.types import StreamEvent, Usage
from edgerun.text.sampling import SamplingParams

log = logging.getLogger("edgerun.server")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


_MISSING = object()


def _field(body: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """Read a field of the right JSON type (bools are not numbers); None means absent."""
    v = body.get(name)
    if v is None:
        if default is _MISSING:
            raise ApiError(400, f"'{name}' is required", param=name, code="missing_required_parameter")
        return default
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        v = "bool"  # force the type error below
    if not isinstance(v, types):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ApiError(400, f"'{name}' must be of type {names}", param=name, code="invalid_type")
    return v


def _sampling(body: dict[str, Any]) -> SamplingParams:
    num = (int, float)
    max_tokens = _field(body, "max_completion_tokens", int, None)
    max_tokens = _field(body, "max_tokens", int, max_tokens)
    if max_tokens is not None and max_tokens <= 0:
        raise ApiError(400, "'max_tokens' must be > 0", param="max_tokens", code="invalid_value")
    n = _field(body, "n", int, 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n", code="invalid_value")
    stop = _field(body, "stop", (str, list), [])
    if isinstance(stop, str):
        stop = [stop]
    if not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of strings", param="stop", code="invalid_type")
    temperature = float(_field(body, "temperature", num, 1.0))
    if temperature > 2:
        raise ApiError(400, "'temperature' must be in [0, 2]", param="temperature", code="invalid_value")
    sp = SamplingParams(
        temperature=temperature,
        top_p=float(_field(body, "top_p", num, 1.0)),
        top_k=_field(body, "top_k", int, 40),
        min_p=float(_field(body, "min_p", num, 0.05)),
        repeat_penalty=float(_field(body, "repeat_penalty", num, 1.0)),
        seed=_field(body, "seed", int, None),
        max_tokens=max_tokens if max_tokens is not None else 256,
        stop=list(stop),
        ignore_eos=_field(body, "ignore_eos", bool, False),
    )
    try:
        sp.validate()
    except ValueError as e:
        raise ApiError(400, str(e), param=str(e).split()[0], code="invalid_value") from None
    return sp


def _message_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise ApiError(400, "only text content parts are supported", param=f"messages[{i}].content",
                               code="invalid_value")
            parts.append(p["text"])
        return "".join(parts)
    raise ApiError(400, "message content must be a string or a list of text parts",
                   param=f"messages[{i}].content", code="invalid_type")


def _usage_json(u: Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               aliases: tuple[str, ...] = ()) -> FastAPI:
    """The FastAPI app serving `engine` under `model_name` (Bearer `api_key` if given).

    Requests may also name the model by any of `aliases` (e.g. its catalog name).
    """
    app = FastAPI(title="edgerun", docs_url=None, redoc_url=None)
    metrics = Metrics()
    engine.observers.append(metrics)
    tok = engine.tokenizer
    created = int(time.time())
    app.state.engine, app.state.metrics = engine, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.on_http_error(exc.status)
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.on_http_error(exc.status_code)
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        metrics.on_http_error(500)
        return ApiError(500, f"internal error: {type(exc).__name__}").response()

    def _auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key (use 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    async def _body(request: Request) -> dict[str, Any]:
        _auth(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object", code="invalid_json")
        model = _field(body, "model", str)
        if model != model_name and model not in aliases:
            raise ApiError(404, f"the model '{model}' does not exist; this server has '{model_name}'",
                           param="model", code="model_not_found")
        return body

    def _submit(ids: list[int], sp: SamplingParams, param: str) -> RequestHandle:
        if len(ids) >= engine.n_ctx:
            raise ApiError(400, f"this model's context is {engine.n_ctx} tokens, the prompt has {len(ids)} "
                           "(at least one token must be left to generate)", param=param,
                           code="context_length_exceeded")
        try:
            return engine.submit(ids, sp)
        except QueueFullError as e:
            raise ApiError(429, f"server busy: {e}", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except ValueError as e:
            raise ApiError(400, str(e), param=param) from None

    async def _collect(handle: RequestHandle, request: Request) -> tuple[str, StreamEvent]:
        """Wait for a whole result, cancelling if the client goes away."""
        parts: list[str] = []
        last = StreamEvent()

        async def drain() -> None:
            nonlocal last
            async for ev in handle.aevents():
                parts.append(ev.text)
                last = ev

        task = asyncio.ensure_future(drain())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.5)
                if done:
                    task.result()
                    break
                if await request.is_disconnected():
                    handle.cancel()
                    task.cancel()
                    raise ApiError(499, "client closed the request")
        finally:
            if not handle.finished:
                handle.cancel()
        if last.finish_reason == "error":
            raise ApiError(500, last.error or "generation failed", code="engine_error")
        return "".join(parts), last

    async def _stream(handle: RequestHandle, make_chunk: Any, first: list[dict[str, Any]],
                      include_usage: bool, rid: str) -> AsyncIterator[bytes]:
        try:
            for c in first:
                yield _sse(c)
            async for ev in handle.aevents():
                if ev.finish_reason == "error":
                    yield _sse({"error": {"message": ev.error or "generation failed", "type": "server_error",
                                          "param": None, "code": "engine_error"}})
                    break
                if ev.text:
                    yield _sse(make_chunk(ev.text, None))
                if ev.finish_reason is not None:
                    yield _sse(make_chunk(None, ev.finish_reason))
                    if include_usage:
                        yield _sse({"id": rid, "object": make_chunk(None, None)["object"], "created": created,
                                    "model": model_name, "choices": [], "usage": _usage_json(ev.usage)})
            yield b"data: [DONE]\n\n"
        finally:
            if not handle.finished:
                handle.cancel()

    def _sse_response(handle: RequestHandle, body: AsyncIterator[bytes]) -> StreamingResponse:
        # The background task also runs when the client leaves before the stream started.
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(handle.cancel))

    def _stream_opts(body: dict[str, Any]) -> bool:
        opts = _field(body, "stream_options", dict, {})
        return bool(opts.get("include_usage", False))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        body = await _body(request)
        messages = _field(body, "messages", list)
        if not messages:
            raise ApiError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, "each message needs a string 'role'", param=f"messages[{i}]",
                               code="invalid_type")
            msgs.append({"role": m["role"], "content": _message_text(m.get("content", ""), i)})
        stream = _field(body, "stream", bool, False)
        include_usage = _stream_opts(body)
        sp = _sampling(body)
        try:
            if hasattr(tok, "encode_chat"):
                ids = tok.encode_chat(msgs, add_generation_prompt=True)
            else:
                ids = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True))
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        handle = _submit(ids, sp, "messages")
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if not stream:
            text, last = await _collect(handle, request)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": last.finish_reason}],
                "usage": _usage_json(last.usage)})

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            delta = {} if text is None else {"content": text}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        first = chunk("", None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return _sse_response(handle, _stream(handle, chunk, [first], include_usage, rid))

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        body = await _body(request)
        prompt = _field(body, "prompt", (str, list))
        if isinstance(prompt, list):
            if len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            elif not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise ApiError(400, "'prompt' must be a string or a list of token ids (one prompt a request)",
                               param="prompt", code="invalid_type")
        stream = _field(body, "stream", bool, False)
        include_usage = _stream_opts(body)
        sp = _sampling(body)
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "'prompt' is empty", param="prompt", code="invalid_value")
            ids = tok.encode(prompt)
        else:
            ids = list(prompt)
        handle = _submit(ids, sp, "prompt")
        rid = f"cmpl-{uuid.uuid4().hex}"
        if not stream:
            text, last = await _collect(handle, request)
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": last.finish_reason}],
                "usage": _usage_json(last.usage)})

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        return _sse_response(handle, _stream(handle, chunk, [], include_usage, rid))

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _auth(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "edgerun", "max_model_len": engine.n_ctx}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        st = engine.stats()
        ok = engine.is_alive()
        return JSONResponse({"status": "ok" if ok else "engine stopped", "model": model_name,
                             "running": st["running"], "waiting": st["waiting"]},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prom() -> PlainTextResponse:
        text = metrics.render(engine.stats(), model_name.replace("\\", "\\\\").replace('"', '\\"'))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edgerun.catalog import ModelError, resolve_model
    from edgerun.models.base import ModelLoadError
    from edgerun.quant.gguf_file import GGUFError
    from edgerun.runtime.hybrid import runner_from_args
    from edgerun.serving.speculative import speculator_from_args

    try:
        path = resolve_model(args.model)
        tiles = args.max_running >= 2 and not args.no_batch_tiles
        runner = runner_from_args(path, args, n_ctx=args.ctx, n_threads=args.threads,
                                  num_blocks=args.kv_blocks, backend=args.backend, batch_tiles=tiles)
        spec = speculator_from_args(args, runner, batch_tiles=tiles)
    except (ModelError, GGUFError, ModelLoadError, ValueError) as e:
        print(f"edgerun: error: {e}", file=sys.stderr)
        return 2
    name = getattr(runner, "model_name", None) or str(args.model)
    engine = Engine(runner, max_running=args.max_running, max_queue=args.max_queue,
                    max_batch_tokens=args.max_batch_tokens, speculative=spec).start()
    app = create_app(engine, name, api_key=args.api_key, aliases=(str(args.model), path.stem, path.name))
    print(f"edgerun: serving {name} on http://{args.host}:{args.port}/v1 (ctx {runner.n_ctx})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.shutdown()
    return 0


def register(sub: Any) -> None:
    """Add `edgerun serve` to an argparse subparsers object."""
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with streaming and /metrics")
    p.add_argument("-m", "--model", required=True, help="catalog name or path to a .gguf file")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--ctx", type=int, default=4096, help="context length per sequence")
    p.add_argument("--max-running", type=int, default=8, help="sequences batched together")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--max-batch-tokens", type=int, default=512, help="token budget per engine step")
    p.add_argument("--no-batch-tiles", action="store_true",
                   help="skip the second, batch-friendly copy of the Q4_0/Q5_0/Q8_0/Q4_K/Q6_K matrices "
                        "(saves their size in memory; batches of 2+ sequences run slower)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the runner")
    p.add_argument("--kv-blocks", type=int, default=None,
                   help="KV cache blocks of 16 tokens (default: two full contexts)")
    p.add_argument("--backend", choices=["auto", "native", "numba", "reference"], default="auto",
                   help="CPU kernels")
    p.add_argument("--log-level", default="info")
    from edgerun.cli import add_placement_args
    from edgerun.serving.speculative import add_speculative_args

    add_placement_args(p)
    add_speculative_args(p)
    p.set_defaults(func=_serve)
