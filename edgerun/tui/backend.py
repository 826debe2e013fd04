"""The chat backend seam: what the UI needs from a model, in-process or over HTTP.

Nothing heavy is imported at module level: the runner, numpy and httpx are imported
inside the methods that need them, which run in worker threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgerun.serving.types import StreamEvent, Timings, Usage

if TYPE_CHECKING:
    from edgerun.text.sampling import SamplingParams

ProgressCb = Callable[[int, int, str], None]
"""`progress(done, total, stage)`; stage is "resolve", "download", "load" or "ready"."""

Placement = dict[int, dict[str, str]]


@runtime_checkable
class ChatBackend(Protocol):
    """What the chat UI drives. `stream_chat` runs in a worker thread; `cancel` may come
    from any thread and makes the running stream end with finish_reason "abort"."""

    def load(self, progress_cb: ProgressCb) -> None: ...

    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[StreamEvent]: ...

    def cancel(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


@runtime_checkable
class CompletionBackend(Protocol):
    """A backend that can continue raw text (a base model without a chat template)."""

    def stream_completion(self, prompt: str, params: SamplingParams) -> Iterator[StreamEvent]: ...


@runtime_checkable
class TokenCounter(Protocol):
    """A backend that knows its model's tokenizer (for attachment token counts)."""

    def count_tokens(self, text: str) -> int: ...


def all_cpu(n_layers: int) -> Placement:
    """A placement map with every layer on the CPU."""
    return {i: {"attn": "cpu", "ffn": "cpu"} for i in range(n_layers)}


def _device(v: Any) -> str:
    s = str(getattr(v, "value", v)).lower()
    return "gpu" if ("gpu" in s or "cuda" in s) else "cpu"


def placement_from_runner(runner: Any, n_layers: int) -> Placement:
    """Best effort per-layer placement from a runner's plan; all CPU when it has none."""
    plan = None
    for name in ("placement", "plan", "placement_plan"):
        plan = getattr(runner, name, None)
        if plan is not None:
            break
    if plan is None:
        return all_cpu(n_layers)
    for meth in ("layer_map", "as_map", "to_map"):
        if callable(getattr(plan, meth, None)):
            plan = getattr(plan, meth)()
            break
    layers = getattr(plan, "layers", plan)
    out = all_cpu(n_layers)
    try:
        items = layers.items() if isinstance(layers, dict) else enumerate(layers)
        for i, spec in items:
            get = spec.get if isinstance(spec, dict) else lambda k, s=spec: getattr(s, k, "cpu")
            out[int(i)] = {k: _device(get(k, "cpu")) for k in ("attn", "ffn")}
    except (TypeError, ValueError, AttributeError):
        return all_cpu(n_layers)
    return out


DEFAULT_SCRIPT = [
    "Here", " is", " a", " tiny", " **Python**", " example", ":\n\n", "```python\n",
    "def ", "greet", "(name", ": str", ") -> str", ":\n", "    return", " f\"Hello", ", {name}!\"", "\n```",
    "\n\n", "It", " returns", " a", " greeting", ".",
]


class ScriptedBackend:
    """Streams a fixed list of text pieces with small delays: for tests and demos."""

    local_context = True  # stands in for an in-process model: the app picks its context size

    def __init__(self, tokens: list[str] | None = None, delay: float = 0.01, load_delay: float = 0.0,
                 model: str = "scripted-model", n_ctx: int = 4096, n_layers: int = 24,
                 fail_load: str | None = None, chat_template: bool = True) -> None:
        self.tokens = list(DEFAULT_SCRIPT if tokens is None else tokens)
        self.chat_template = chat_template
        self.delay = delay
        self.load_delay = load_delay
        self.model = model
        self.n_ctx = n_ctx
        self.n_layers = n_layers
        self.fail_load = fail_load
        self.requests: list[tuple[list[dict], Any]] = []
        self.ctx_used = 0
        self._cancel = threading.Event()

    def load(self, progress_cb: ProgressCb) -> None:
        """Pretend to load in a few steps."""
        steps = 4
        for i in range(steps + 1):
            progress_cb(i, steps, "load")
            if self.load_delay and i < steps:
                time.sleep(self.load_delay / steps)
        if self.fail_load:
            raise RuntimeError(self.fail_load)
        progress_cb(1, 1, "ready")

    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[StreamEvent]:
        """Yield one event per scripted piece, then a final one with usage and timings."""
        self.requests.append(([dict(m) for m in messages], params))
        return self._stream(sum(len(m["content"].split()) + 4 for m in messages), params)

    def stream_completion(self, prompt: str, params: SamplingParams) -> Iterator[StreamEvent]:
        """The same script as a continuation of `prompt`; recorded as ("completion", prompt)."""
        self.requests.append((prompt, params))
        return self._stream(self.count_tokens(prompt), params)

    def count_tokens(self, text: str) -> int:
        """One token per whitespace-separated word: good enough for a scripted model."""
        return len(text.split())

    def _stream(self, prompt: int, params: SamplingParams) -> Iterator[StreamEvent]:
        self._cancel.clear()
        n = 0
        limit = getattr(params, "max_tokens", len(self.tokens))
        for i, piece in enumerate(self.tokens[:limit]):
            if self._cancel.is_set():
                break
            time.sleep(self.delay)
            n += 1
            yield StreamEvent(text=piece, token_ids=[i], usage=Usage(prompt, n))
        reason = "abort" if self._cancel.is_set() else ("length" if n < len(self.tokens) else "stop")
        self.ctx_used = prompt + n
        yield StreamEvent(finish_reason=reason, usage=Usage(prompt, n),
                          timings=Timings(ttft_s=0.042, decode_tok_s=123.4, prefill_tok_s=900.0))

    def cancel(self) -> None:
        """Stop the running stream."""
        self._cancel.set()

    def info(self) -> dict[str, Any]:
        """Fixed model facts."""
        return {"model": self.model, "backend": "scripted", "n_ctx": self.n_ctx,
                "ctx_used": self.ctx_used, "placement": all_cpu(self.n_layers),
                "chat_template": self.chat_template}


class InProcessBackend:
    """The edgerun engine in this process: resolve (and pull) the model, build a Runner and
    an Engine, and stream chat completions from it."""

    local_context = True  # the context size is ours to choose (a server decides its own)

    def __init__(self, model_spec: str, threads: int | None = None, ctx: int = 4096,
                 placement: Any = None, deterministic: bool = False) -> None:
        self.model_spec = model_spec
        self.deterministic = deterministic  # the engine's batch-invariant mode (serve --deterministic)
        self.threads = threads
        self.ctx = ctx
        self.placement_args = placement  # namespace with placement/vram_budget/override, or None
        self.path: str | None = None
        self.runner: Any = None
        self.engine: Any = None
        self.ctx_used = 0
        self._handle: Any = None
        self._lock = threading.Lock()
        self._cancelled = False

    def load(self, progress_cb: ProgressCb) -> None:
        """Resolve the model (pulling a missing catalog model), then load it. Blocking."""
        from edgerun.catalog import resolve_model

        progress_cb(0, 0, "resolve")
        path = resolve_model(self.model_spec, progress=lambda d, t, s: progress_cb(d, t, "download"))
        self.path = str(path)
        progress_cb(0, 0, "load")
        from edgerun.cli.args import runner_options
        from edgerun.runtime.factory import make_runner
        from edgerun.serving.engine import Engine

        opts = runner_options(self.placement_args, n_ctx=self.ctx, n_threads=self.threads)
        self.runner = make_runner(self.path, opts)
        self.engine = Engine(self.runner, deterministic=self.deterministic)
        self.engine.start()
        progress_cb(1, 1, "ready")

    def _prompt_ids(self, messages: list[dict], max_tokens: int) -> list[int]:
        """Render the chat template; drop the oldest turns while the prompt does not fit."""
        tok = self.runner.tokenizer
        n_ctx = int(getattr(self.runner, "n_ctx", self.ctx))
        msgs = list(messages)
        while True:
            text = tok.apply_chat_template(msgs, add_generation_prompt=True)
            ids = tok.encode(text, add_bos=None)
            budget = n_ctx - min(max_tokens, n_ctx // 4)
            first = 1 if msgs and msgs[0]["role"] == "system" else 0
            if len(ids) <= budget or len(msgs) - first <= 1:
                return ids[-(n_ctx - 1):]
            del msgs[first]

    @property
    def has_chat_template(self) -> bool:
        """False for a base model: its GGUF has no `tokenizer.chat_template`."""
        return bool(getattr(self.runner.tokenizer, "chat_template", None))

    def model_path(self) -> str | None:
        """The GGUF file in use, once resolved."""
        return self.path

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with the model's tokenizer (no BOS)."""
        if self.runner is None:
            raise RuntimeError("model is not loaded")
        return len(self.runner.tokenizer.encode(text, add_bos=False))

    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[StreamEvent]:
        """Submit the conversation to the engine and yield its events."""
        if self.engine is None:
            raise RuntimeError("model is not loaded")
        if not self.has_chat_template:
            raise RuntimeError("this model has no chat template; it runs in completion mode")
        yield from self._stream_ids(self._prompt_ids(messages, params.max_tokens), params)

    def stream_completion(self, prompt: str, params: SamplingParams) -> Iterator[StreamEvent]:
        """Continue raw text (base models); a prompt longer than the context keeps its end."""
        if self.engine is None:
            raise RuntimeError("model is not loaded")
        n_ctx = int(getattr(self.runner, "n_ctx", self.ctx))
        ids = self.runner.tokenizer.encode(prompt, add_bos=None)
        keep = n_ctx - min(params.max_tokens, n_ctx // 4)
        yield from self._stream_ids(ids if len(ids) <= keep else ids[-keep:], params)

    def _stream_ids(self, ids: list[int], params: SamplingParams) -> Iterator[StreamEvent]:
        with self._lock:
            self._cancelled = False
            self._handle = self.engine.submit(ids, params)
        self.ctx_used = len(ids)
        try:
            for ev in self._handle.events():
                self.ctx_used = len(ids) + ev.usage.completion_tokens
                yield ev
        finally:
            with self._lock:
                self._handle = None

    def cancel(self) -> None:
        """Cancel the running request (its stream ends with finish_reason "abort")."""
        with self._lock:
            self._cancelled = True
            if self._handle is not None:
                self._handle.cancel()

    def close(self) -> None:
        """Stop the engine thread, if the engine has a way to."""
        self.cancel()
        for name in ("stop", "shutdown", "close"):
            fn = getattr(self.engine, name, None)
            if callable(fn):
                try:
                    fn()
                except Exception:  # noqa: BLE001 - closing must never fail the UI
                    pass
                break

    def info(self) -> dict[str, Any]:
        """Model name, context size and use, and the per-layer placement map."""
        from pathlib import Path

        spec_is_path = self.model_spec.endswith(".gguf") or "/" in self.model_spec
        name = Path(self.path).stem if (self.path and spec_is_path) else self.model_spec
        if self.runner is None:
            return {"model": name, "backend": "in-process", "n_ctx": self.ctx, "ctx_used": 0, "placement": {}}
        n_layers = int(getattr(getattr(self.runner, "args", None), "n_layers", 0) or 0)
        return {"model": name, "backend": "in-process", "n_ctx": int(getattr(self.runner, "n_ctx", self.ctx)),
                "ctx_used": self.ctx_used, "placement": placement_from_runner(self.runner, n_layers),
                "chat_template": self.has_chat_template}


class HttpBackend:
    """Any OpenAI-compatible server: `/v1/chat/completions` with stream=true and usage."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0) -> None:
        base = url.rstrip("/")
        self.base = base[:-3] if base.endswith("/v1") else base
        self.api_key = api_key
        self.model = model
        self.timeout = timeout
        self.n_ctx = 0
        self.ctx_used = 0
        self._cancel = threading.Event()
        self._response: Any = None

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "text/event-stream"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def load(self, progress_cb: ProgressCb) -> None:
        """Check the server answers and pick its first model when none was named."""
        import httpx

        progress_cb(0, 0, "load")
        try:
            r = httpx.get(f"{self.base}/v1/models", headers=self._headers(), timeout=10.0)
            r.raise_for_status()
            data = r.json().get("data", [])
        except (httpx.HTTPError, ValueError) as e:
            raise RuntimeError(f"cannot reach {self.base}: {e}") from e
        if data:
            ids = [m.get("id") for m in data]
            if self.model is None or self.model not in ids:
                self.model = self.model or ids[0]
            for m in data:
                if m.get("id") == self.model:
                    for key in ("context_length", "n_ctx", "max_model_len"):
                        if isinstance(m.get(key), int):
                            self.n_ctx = m[key]
        progress_cb(1, 1, "ready")

    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[StreamEvent]:
        """POST the chat and turn the SSE chunks into StreamEvents."""
        return self._stream("/v1/chat/completions", {"messages": messages}, params)

    def stream_completion(self, prompt: str, params: SamplingParams) -> Iterator[StreamEvent]:
        """POST to /v1/completions (raw text continuation) and stream it."""
        return self._stream("/v1/completions", {"prompt": prompt}, params)

    def _body(self, params: SamplingParams) -> dict[str, Any]:
        """Every sampling setting, named as llama.cpp's server names them; a server that does
        not know a field answers with an error, which the chat shows."""
        body: dict[str, Any] = {
            "model": self.model or "default", "stream": True, "stream_options": {"include_usage": True},
            "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
            "min_p": params.min_p, "repeat_penalty": params.repeat_penalty,
        }
        if params.repeat_penalty != 1.0:
            body["repeat_last_n"] = params.repeat_last_n
        # "No limit" reaches us as the context size (or more when it is unknown): leave it to the server.
        if not (self.n_ctx and params.max_tokens >= self.n_ctx) and params.max_tokens < (1 << 20):
            body["max_tokens"] = params.max_tokens
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _stream(self, path: str, payload: dict[str, Any], params: SamplingParams) -> Iterator[StreamEvent]:
        import httpx

        self._cancel.clear()
        body = {**self._body(params), **payload}
        t0 = time.perf_counter()
        t_first: float | None = None
        n = 0
        usage = Usage()
        finish: str | None = None
        try:
            with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10.0)) as client, client.stream(
                "POST", f"{self.base}{path}", json=body, headers=self._headers()
            ) as resp:
                self._response = resp
                if resp.status_code >= 400:
                    resp.read()
                    yield StreamEvent(finish_reason="error", error=_error_text(resp))
                    return
                for line in resp.iter_lines():
                    if self._cancel.is_set():
                        break
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        continue
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))
                    for ch in chunk.get("choices") or []:
                        text = (ch.get("delta") or {}).get("content") or ch.get("text") or ""
                        finish = ch.get("finish_reason") or finish
                        if text:
                            if t_first is None:
                                t_first = time.perf_counter()
                            n += 1
                            yield StreamEvent(text=text, usage=Usage(usage.prompt_tokens, n))
        except httpx.HTTPError as e:
            if not self._cancel.is_set():
                yield StreamEvent(finish_reason="error", error=f"{type(e).__name__}: {e}")
                return
        finally:
            self._response = None
        t1 = time.perf_counter()
        if usage.completion_tokens == 0:
            usage = Usage(usage.prompt_tokens, n)
        self.ctx_used = usage.total_tokens
        ttft = (t_first - t0) if t_first else 0.0
        decode = (usage.completion_tokens - 1) / (t1 - t_first) if t_first and t1 > t_first else 0.0
        reason = "abort" if self._cancel.is_set() else (finish or "stop")
        yield StreamEvent(finish_reason=reason, usage=usage,
                          timings=Timings(ttft_s=ttft, decode_tok_s=decode, total_s=t1 - t0))

    def cancel(self) -> None:
        """Stop reading the stream and close the connection."""
        self._cancel.set()
        resp = self._response
        if resp is not None:
            try:
                resp.close()
            except Exception:  # noqa: BLE001 - the reader thread notices the flag anyway
                pass

    def info(self) -> dict[str, Any]:
        """What is known about the remote model; placement is the server's business."""
        return {"model": self.model or "(server default)", "backend": f"http {self.base}",
                "n_ctx": self.n_ctx, "ctx_used": self.ctx_used, "placement": {}}


def _error_text(resp: Any) -> str:
    try:
        err = resp.json().get("error", {})
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except ValueError:
        msg = resp.text[:200]
    return f"HTTP {resp.status_code}: {msg}"
