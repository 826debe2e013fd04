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

    def __init__(self, tokens: list[str] | None = None, delay: float = 0.01, load_delay: float = 0.0,
                 model: str = "scripted-model", n_ctx: int = 4096, n_layers: int = 24,
                 fail_load: str | None = None) -> None:
        self.tokens = list(DEFAULT_SCRIPT if tokens is None else tokens)
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
        self._cancel.clear()
        self.requests.append(([dict(m) for m in messages], params))
        prompt = sum(len(m["content"].split()) + 4 for m in messages)
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
                "ctx_used": self.ctx_used, "placement": all_cpu(self.n_layers)}


class InProcessBackend:
    """The edgerun engine in this process: resolve (and pull) the model, build a Runner and
    an Engine, and stream chat completions from it."""

    def __init__(self, model_spec: str, threads: int | None = None, ctx: int = 4096,
                 placement: Any = None) -> None:
        self.model_spec = model_spec
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
        self.engine = Engine(self.runner)
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

    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[StreamEvent]:
        """Submit the conversation to the engine and yield its events."""
        if self.engine is None:
            raise RuntimeError("model is not loaded")
        ids = self._prompt_ids(messages, params.max_tokens)
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
                "ctx_used": self.ctx_used, "placement": placement_from_runner(self.runner, n_layers)}


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
        import httpx

        self._cancel.clear()
        body = {"model": self.model or "default", "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": params.temperature,
                "top_p": params.top_p, "max_tokens": params.max_tokens}
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        t0 = time.perf_counter()
        t_first: float | None = None
        n = 0
        usage = Usage()
        finish: str | None = None
        try:
            with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10.0)) as client, client.stream(
                "POST", f"{self.base}/v1/chat/completions", json=body, headers=self._headers()
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
                        text = (ch.get("delta") or {}).get("content") or ""
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
