"""Hostile HTTP input against a live server (FakeRunner engine): bodies, JSON, headers, hosts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from edgerun.server.app import create_app
from edgerun.server.guard import guarded_protocol
from edgerun.server.options import ServerSafety
from edgerun.serving.engine import Engine
from edgerun.text.templates import BrokenTemplate, ChatTemplateError
from tests.test_scheduler import VOCAB, FakeRunner

MODEL = "fake-model"
KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "abc", "max_tokens": 4}


class Server:
    def __init__(self, engine: Engine, safety: ServerSafety) -> None:
        self.engine = engine
        self.app = create_app(engine, MODEL, api_key=KEY, safety=safety)
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                             http=guarded_protocol(safety.header_timeout))
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: Any = None, raw: bytes | None = None, **headers: str) -> httpx.Response:
        h = {**AUTH, "Content-Type": "application/json", **headers}
        return httpx.post(self.url + path, content=raw if raw is not None else json.dumps(body), headers=h,
                          timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.shutdown()


SAFETY = ServerSafety(max_body=256 * 1024, header_timeout=1.0, body_timeout=1.0,
                      cors_origins=("https://app.example",))


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    s = Server(Engine(FakeRunner(num_blocks=64, block_size=4, n_ctx=256)).start(), SAFETY)
    yield s
    s.stop()


def error_of(r: httpx.Response) -> dict[str, Any]:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("path,body,param", [
    pytest.param("/v1/completions", {**COMPLETION, "prompt": [1, VOCAB]}, "prompt", id="id-eq-vocab"),
    pytest.param("/v1/completions", {**COMPLETION, "prompt": [1, -1]}, "prompt", id="id-negative"),
    pytest.param("/v1/completions", {**COMPLETION, "prompt": [1, 2**40]}, "prompt", id="id-2^40"),
    pytest.param("/v1/completions", {**COMPLETION, "prompt": []}, "prompt", id="empty-id-list"),
    pytest.param("/v1/completions", {**COMPLETION, "repeat_penalty": 1e-40}, "repeat_penalty",
                 id="penalty-1e-40"),
    pytest.param("/v1/completions", {**COMPLETION, "temperature": 1e-320}, "temperature", id="temp-1e-320"),
    pytest.param("/v1/completions", {**COMPLETION, "stop": ""}, "stop", id="empty-stop"),
    pytest.param("/v1/completions", {**COMPLETION, "seed": -1}, "seed", id="seed-negative"),
    pytest.param("/v1/completions", {**COMPLETION, "frequency_penalty": 0.5}, "frequency_penalty",
                 id="unsupported-penalty"),
    pytest.param("/v1/completions", {**COMPLETION, "best_of": 3}, "best_of", id="unknown-field"),
    pytest.param("/v1/chat/completions", {**CHAT, "messages": [{"role": "hacker", "content": "x"}]},
                 "messages[0].role", id="unknown-role"),
    pytest.param("/v1/chat/completions",
                 {**CHAT, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
                 "messages[0].content", id="non-text-part"),
    pytest.param("/v1/completions", {**COMPLETION, "prompt": "x" * 65537}, "prompt", id="early-length-check"),
])
def test_refused_with_400_naming_the_field(srv: Server, path: str, body: dict, param: str) -> None:
    r = srv.post(path, body)
    assert r.status_code == 400, r.text
    assert error_of(r)["param"] == param


@pytest.mark.parametrize("raw,param", [
    pytest.param(b'{"model": "fake-model", "prompt": "a", "repeat_penalty": NaN}', "repeat_penalty",
                 id="nan"),
    pytest.param(b'{"model": "fake-model", "prompt": "a", "temperature": Infinity}', "temperature", id="inf"),
    pytest.param(b'{"model": "fake-model", "prompt": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 None, id="100k-deep"),
    pytest.param(b'{"model": "fake-model", "prompt": "a", "seed": ' + b"9" * 5000 + b"}", None,
                 id="5000-digits"),
    pytest.param(b'{"model": "fake-model", "prompt": "\\ud800 lone"}', "prompt", id="lone-surrogate"),
    pytest.param(b'{"model": "fake-model", "prompt": "a", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "x",
                 id="40-deep"),
])
def test_bad_json_is_400_not_500(srv: Server, raw: bytes, param: str | None) -> None:
    r = srv.post("/v1/completions", raw=raw)
    assert r.status_code == 400, r.text
    if param is not None:
        assert error_of(r)["param"].startswith(param)


def test_body_limit_413_before_reading(srv: Server) -> None:
    # a Content-Length over the limit is answered without the body being sent at all
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 104857600\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):  # headers and body may come in separate packets; it closes after
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"body_too_large" in reply
    # a chunked body is cut at the limit
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 4096

    r = httpx.post(srv.url + "/v1/completions", content=chunks(), headers=AUTH, timeout=30)
    assert r.status_code == 413


def test_slow_clients_are_dropped(srv: Server) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # headers never end
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n")
        t0 = time.monotonic()
        assert s.recv(4096) == b""  # closed by the server
        assert time.monotonic() - t0 < 9
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # body never ends
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"mo")
        assert s.recv(4096).startswith(b"HTTP/1.1 408")
    assert httpx.get(srv.url + "/health").status_code == 200


def test_headers_allow_and_www_authenticate(srv: Server) -> None:
    r = httpx.get(srv.url + "/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.post(srv.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_host_and_origin_checks_on_loopback(srv: Server) -> None:
    r = srv.post("/v1/completions", COMPLETION, Host="evil.example")
    assert r.status_code == 403 and error_of(r)["code"] == "host_not_allowed"
    r = srv.post("/v1/completions", COMPLETION, Origin="http://evil.example")
    assert r.status_code == 403 and error_of(r)["code"] == "origin_not_allowed"
    for ok in ({"Host": f"localhost:{srv.port}"}, {"Origin": "http://localhost:3000"},
               {"Origin": "https://app.example"}):
        assert srv.post("/v1/completions", COMPLETION, **ok).status_code == 200, ok
    # CORS preflight for the allowed origin
    r = httpx.options(srv.url + "/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"


def test_cors_off_by_default() -> None:
    s = Server(Engine(FakeRunner()).start(), ServerSafety())
    try:
        r = httpx.options(s.url + "/v1/chat/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers
        r = s.post("/v1/completions", COMPLETION, Origin="http://localhost:3000")
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    finally:
        s.stop()


def test_openapi_documents_request_bodies(srv: Server) -> None:
    doc = httpx.get(srv.url + "/openapi.json").json()
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"),
                        ("/v1/completions", "CompletionRequest")):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
        assert "model" in doc["components"]["schemas"][model]["required"]
    roles = doc["components"]["schemas"]["ChatMessage"]["properties"]["role"]["enum"]
    assert set(roles) == {"system", "user", "assistant", "tool"}


class BrokenChatTokenizer:
    """A tokenizer whose model template did not compile: chat fails, plain prompts work."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chat = BrokenTemplate(ChatTemplateError("m.gguf: chat template does not compile: line 1: x"))
        self.eos_ids, self.bos_id = inner.eos_ids, inner.bos_id

    def encode(self, *a: Any, **k: Any) -> list[int]:
        return self.inner.encode(*a, **k)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        self.chat.render(messages, add_generation_prompt)
        return []


def test_broken_template_fails_only_chat() -> None:
    runner = FakeRunner()
    runner.tokenizer = BrokenChatTokenizer(runner.tokenizer)  # type: ignore[assignment]
    s = Server(Engine(runner).start(), ServerSafety())
    try:
        r = s.post("/v1/chat/completions", CHAT)
        assert r.status_code == 400 and "does not compile" in error_of(r)["message"]
        assert s.post("/v1/completions", COMPLETION).status_code == 200
    finally:
        s.stop()
