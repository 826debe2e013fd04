"""OpenAI-compatible HTTP server over the engine: chat/completions with SSE, models, metrics.

`create_app(engine, model_name, api_key=None)` builds the FastAPI app (tests use it with any
engine); the `edgerun serve` command is edgerun/cli/serve.py. Every error uses OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from edgerun.server.guard import GuardMiddleware
from edgerun.server.metrics import Metrics
from edgerun.server.options import ServerSafety
from edgerun.server.schemas import ChatCompletionRequest, CompletionRequest, first_error, openapi_components
from edgerun.serving.engine import Engine, QueueFullError, RequestError, RequestHandle
from edgerun.serving.types import StreamEvent, Usage
from edgerun.text.sampling import SamplingParams

log = logging.getLogger("edgerun.server")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}

# A prompt whose text is longer than this many characters per context token cannot fit (no
# vocabulary has tokens this long), so it is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 256
MAX_JSON_DEPTH = 32  # no valid body nests deeper
_T = TypeVar("_T")


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


def _check_json(v: Any, path: str = "body", depth: int = 0) -> None:
    """Refuse what json.loads accepts but no request may hold: deep nesting, lone surrogates."""
    if depth > MAX_JSON_DEPTH:
        raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", param=path,
                       code="invalid_json")
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "string holds a lone UTF-16 surrogate (not valid Unicode)", param=path,
                           code="invalid_json") from None
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_json(k, path, depth + 1)
            _check_json(x, f"{path}.{k}" if path != "body" else k, depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_json(x, f"{path}[{i}]", depth + 1)


def _parse(model: type[_T], body: dict[str, Any]) -> _T:
    try:
        return model.model_validate(body)  # type: ignore[attr-defined,no-any-return]
    except ValidationError as e:
        param, msg = first_error(e)
        raise ApiError(400, msg, param=param, code="invalid_value") from None


def _sampling(req: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0):
            raise ApiError(400, f"'{name}' is not supported (only 0); use 'repeat_penalty'", param=name,
                           code="unsupported_parameter")
    if req.logprobs:
        raise ApiError(400, "'logprobs' is not supported", param="logprobs", code="unsupported_parameter")
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 16:
        raise ApiError(400, "at most 16 stop strings", param="stop", code="invalid_value")
    sp = SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=40 if req.top_k is None else req.top_k,
        min_p=0.05 if req.min_p is None else req.min_p,
        repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
        seed=req.seed,
        max_tokens=max_tokens if max_tokens is not None else 256,
        stop=stop,
        ignore_eos=bool(req.ignore_eos),
    )
    try:
        sp.validate()
    except ValueError as e:
        raise ApiError(400, str(e), param=str(e).split()[0], code="invalid_value") from None
    return sp


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)


def _usage_json(u: Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               aliases: tuple[str, ...] = (), safety: ServerSafety | None = None) -> FastAPI:
    """The FastAPI app serving `engine` under `model_name` (Bearer `api_key` if given).

    Requests may also name the model by any of `aliases` (e.g. its catalog name). `safety`
    sets the body limit, slow-client timeout, Host/Origin checks and CORS (server/guard.py).
    """
    safety = safety or ServerSafety()
    app = FastAPI(title="edgerun", docs_url=None, redoc_url=None)
    metrics = Metrics()
    engine.observers.append(metrics)
    tok = engine.tokenizer
    created = int(time.time())
    app.state.engine, app.state.metrics = engine, metrics
    if safety.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(safety.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"], max_age=600)
    app.add_middleware(GuardMiddleware, safety=safety, on_error=metrics.on_http_error)
    # Tokenizing and template rendering run here, off the event loop, one at a time: /health and
    # streams stay responsive while a large prompt is tokenized or a template runs its budget.
    text_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgerun-text")
    app.state.text_pool = text_pool

    async def off_loop(fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(text_pool, fn, *args)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.on_http_error(exc.status)
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.on_http_error(exc.status_code)
        return ApiError(exc.status_code, str(exc.detail), headers=exc.headers).response()  # keeps Allow

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
                           code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="edgerun"'})

    async def _body(request: Request, model_cls: type[_T]) -> _T:
        _auth(request)
        raw = await request.body()  # already read (and bounded) by GuardMiddleware
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}", code="invalid_json") from None
        except RecursionError:
            raise ApiError(400, "malformed JSON body: nested too deep", code="invalid_json") from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise ApiError(400, f"malformed JSON body: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object", code="invalid_json")
        _check_json(body)
        model = body.get("model")
        if isinstance(model, str) and model != model_name and model not in aliases:
            raise ApiError(404, f"the model '{model}' does not exist; this server has '{model_name}'",
                           param="model", code="model_not_found")
        return _parse(model_cls, body)

    def _too_long(chars: int, param: str) -> None:
        """The early length check: refuse text that cannot fit before spending time tokenizing it."""
        if chars > engine.n_ctx * MAX_CHARS_PER_TOKEN:
            raise ApiError(400, f"the prompt has {chars} characters; this model's context of {engine.n_ctx} "
                           "tokens cannot hold it", param=param, code="context_length_exceeded")

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
        except RequestError as e:
            raise ApiError(400, str(e), param=param if e.param in (None, "prompt") else e.param,
                           code="invalid_value") from None
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

    def _encode_chat(msgs: list[dict[str, Any]]) -> list[int]:
        if hasattr(tok, "encode_chat"):
            return list(tok.encode_chat(msgs, add_generation_prompt=True))
        return list(tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True)))

    bodies, _ = openapi_components()

    @app.post("/v1/chat/completions", response_model=None,
              openapi_extra={"requestBody": bodies["ChatCompletionRequest"]})
    async def chat_completions(request: Request) -> Response:
        req = await _body(request, ChatCompletionRequest)
        msgs = [{"role": m.role, "content": _message_text(m.content)} for m in req.messages]
        stream = bool(req.stream)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        sp = _sampling(req)
        _too_long(sum(len(m["content"]) for m in msgs), "messages")
        try:
            ids = await off_loop(_encode_chat, msgs)
        except ValueError as e:  # the template refused or failed (ChatTemplateError), bad text
            raise ApiError(400, str(e), param="messages", code="invalid_value") from None
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

    @app.post("/v1/completions", response_model=None,
              openapi_extra={"requestBody": bodies["CompletionRequest"]})
    async def completions(request: Request) -> Response:
        req = await _body(request, CompletionRequest)
        prompt: Any = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, "'prompt' must be a string or a list of token ids (one prompt a request)",
                               param="prompt", code="invalid_value")
            prompt = prompt[0]
        stream = bool(req.stream)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        sp = _sampling(req)
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "'prompt' is empty", param="prompt", code="invalid_value")
            _too_long(len(prompt), "prompt")
            try:
                ids = await off_loop(tok.encode, prompt)
            except ValueError as e:
                raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        else:
            if not prompt:
                raise ApiError(400, "'prompt' is empty", param="prompt", code="invalid_value")
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

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = openapi_components()[1]
            for name in ("ChatCompletionRequest", "CompletionRequest"):  # this server's model names
                schemas[name]["properties"]["model"]["enum"] = [model_name, *aliases]
            doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
