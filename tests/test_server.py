"""HTTP server on a free port with a FakeRunner-backed engine, via `openai` and raw httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import uvicorn

from edgerun.server.app import create_app
from edgerun.serving.engine import Engine
from edgerun.text.sampling import SamplingParams
from tests.test_scheduler import FakeRunner, prompt

MODEL = "fake-model"
KEY = "sk-test"


class LiveServer:
    def __init__(self, engine: Engine, api_key: str | None = None, model: str = MODEL) -> None:
        self.engine = engine
        self.model = model
        self.app = create_app(engine, model, api_key=api_key)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.shutdown()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    eng = Engine(FakeRunner(num_blocks=64, block_size=4, n_ctx=256, delay=0.002), max_running=4,
                 max_queue=8).start()
    s = LiveServer(eng, api_key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0)


def wait_idle(eng: Engine, timeout: float = 5.0) -> None:
    deadline = time.time() + timeout
    while (eng.stats()["running"] or eng.stats()["waiting"]) and time.time() < deadline:
        time.sleep(0.01)
    assert eng.stats()["running"] == 0 and eng.kv.num_used_blocks == 0


def test_models_and_health(live: LiveServer, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    r = httpx.get(live.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_chat_non_streaming_and_streaming_agree(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "hello there"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.choices[0].message.role == "assistant" and len(r.choices[0].message.content) == 12
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # same prompt again


def test_completions_seed_and_stop(client: openai.OpenAI) -> None:
    a = client.completions.create(model=MODEL, prompt="abc", max_tokens=20, temperature=0.8, seed=7)
    b = client.completions.create(model=MODEL, prompt="abc", max_tokens=20, temperature=0.8, seed=7)
    assert a.choices[0].text == b.choices[0].text and len(a.choices[0].text) == 20
    full = a.choices[0].text
    stop = full[5:7]
    s = client.completions.create(model=MODEL, prompt="abc", max_tokens=20, temperature=0.8, seed=7,
                                  stop=[stop, "\x01"], stream=True)
    text = "".join(c.choices[0].text for c in s)
    assert text == full[: full.index(stop)]
    ids = client.completions.create(model=MODEL, prompt=prompt(1), max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 20


def test_metrics_exposition(live: LiveServer, client: openai.OpenAI) -> None:
    client.completions.create(model=MODEL, prompt="metrics", max_tokens=4, temperature=0)
    text = httpx.get(live.url + "/metrics").text
    for name in ("edgerun_time_to_first_token_seconds_bucket", "edgerun_inter_token_latency_seconds_count",
                 "edgerun_e2e_request_latency_seconds_sum", "edgerun_prompt_tokens_total",
                 "edgerun_generation_tokens_total", "edgerun_num_requests_running",
                 "edgerun_num_requests_waiting", "edgerun_kv_blocks_used", "edgerun_prefix_cache_hit_rate"):
        assert name in text
    samples = {ln.split(" ")[0]: float(ln.split(" ")[1])
               for ln in text.splitlines() if not ln.startswith("#")}
    assert samples["edgerun_generation_tokens_total"] >= 4
    assert samples['edgerun_time_to_first_token_seconds_bucket{le="+Inf"}'] >= 1


def post(live: LiveServer, path: str, body: object, key: str | None = KEY, raw: bytes | None = None
         ) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return httpx.post(live.url + path, content=raw, headers=headers)
    return httpx.post(live.url + path, json=body, headers=headers)


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.parametrize("path,body,status,param", [
    ("/v1/chat/completions", {"messages": CHAT["messages"]}, 400, "model"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"content": "x"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": "9"}, 400, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": -3}, 400, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, 400, "temperature"),
    ("/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {**CHAT, "stop": 5}, 400, "stop"),
    ("/v1/chat/completions", {**CHAT, "top_p": 0}, 400, "top_p"),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": 3}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x" * 300}, 400, "prompt"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x" * 300}]}, 400, "messages"),
])
def test_bad_requests(live: LiveServer, path: str, body: dict, status: int, param: str) -> None:
    r = post(live, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param


def test_malformed_json_auth_and_unknown_route(live: LiveServer) -> None:
    r = post(live, "/v1/chat/completions", None, raw=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(live, "/v1/chat/completions", None, raw=b"[1, 2]")
    assert r.status_code == 400
    for key in (None, "wrong"):
        r = post(live, "/v1/chat/completions", CHAT, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/v1/models").status_code == 401
    r = httpx.get(live.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()
    r = post(live, "/v1/chat/completions", {**CHAT, "max_tokens": 0})
    assert r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=0)


def test_disconnect_mid_stream_frees_blocks(live: LiveServer) -> None:
    eng = live.engine
    wait_idle(eng)
    aborted = live.app.state.metrics.finished.get("abort", 0)
    gen0 = eng.stats()["generation_tokens"]
    body = {**CHAT, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        got = [ln for ln in (next(lines) for _ in range(8)) if ln.startswith("data:")]
        assert got and json.loads(got[0][5:])["object"] == "chat.completion.chunk"
        assert eng.stats()["running"] == 1
    wait_idle(eng)
    assert live.app.state.metrics.finished.get("abort", 0) == aborted + 1
    assert eng.stats()["generation_tokens"] - gen0 < 150


def test_queue_full_gives_429(live: LiveServer) -> None:
    eng = live.engine
    wait_idle(eng)
    runner = eng.runner
    with runner.lock:  # hold the engine inside forward() so that requests pile up
        hs = []
        first = eng.submit(prompt(1), eng_params())
        time.sleep(0.2)
        try:
            while True:
                hs.append(eng.submit(prompt(2), eng_params()))
        except Exception:
            pass
        r = post(live, "/v1/chat/completions", CHAT)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        for h in [first, *hs]:
            h.cancel()
    wait_idle(eng)


def eng_params() -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=50)


def test_disconnect_non_streaming_cancels(live: LiveServer) -> None:
    eng = live.engine
    wait_idle(eng)
    aborted = live.app.state.metrics.finished.get("abort", 0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 250},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=0.15)
    wait_idle(eng)
    assert live.app.state.metrics.finished.get("abort", 0) == aborted + 1


def test_loadtest_against_server(live: LiveServer, tmp_path) -> None:
    from edgerun import loadtest

    levels = loadtest.run(live.url, [1, 4], n_requests=4, prompt_tokens=8, max_tokens=6, api_key=KEY)
    assert [lv.concurrency for lv in levels] == [1, 4]
    assert all(lv.errors == 0 and lv.output_tokens_per_s > 0 for lv in levels)
    assert levels[0].ttft_p99_s >= levels[0].ttft_p50_s > 0
    loadtest.plot(levels, str(tmp_path / "lt.png"))
    assert (tmp_path / "lt.png").stat().st_size > 1000
    assert "conc" in loadtest.format_table(levels)
    wait_idle(live.engine)


def test_gpu_gauges_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgerun.server import metrics as m

    gpu = {"memory_used": 2e9, "memory_total": 8e10, "utilization": 0.5}
    monkeypatch.setattr(m, "gpu_stats", lambda: [gpu])
    stats = {"running": 1, "waiting": 0, "kv_blocks_used": 3, "kv_blocks_total": 8, "kv_usage": 0.375,
             "prefix_cache_hit_rate": 0.0, "prefix_cache_queries": 0, "prefix_cache_hits": 0}
    text = m.Metrics().render(stats)
    assert 'edgerun_gpu_memory_used_bytes{gpu="0"} 2000000000.0' in text
    assert 'edgerun_gpu_utilization_ratio{gpu="0"} 0.5' in text
