"""Pilot tests of the chat app with the scripted backend (no model needed)."""

from __future__ import annotations

import json

import pytest

from edgerun.tui.backend import ScriptedBackend
from edgerun.tui.history import HistoryStore
from edgerun.tui.settings import Settings, data_dir

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERUN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def make_app(**kw):
    from edgerun.tui.app import ChatApp

    backend = kw.pop("backend", None) or ScriptedBackend(delay=0.005)
    return ChatApp(backend, freeze_stats=True, **kw)


async def wait_idle(app, pilot, timeout: float = 10.0) -> None:
    """Wait until the model is loaded and no reply is streaming."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        await pilot.pause(0.02)
        if app.ready and not app.chat.streaming and not app.chat.waiting:
            await pilot.pause(0.05)
            return
    raise AssertionError("app did not become idle")


async def until(pilot, cond, timeout: float = 10.0) -> None:
    """Poll `cond()` until true (fixed sleeps flake on a loaded 2-core machine)."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


async def send(app, pilot, text: str) -> None:
    await pilot.click("#prompt")
    app.chat.prompt.set_text(text)
    await pilot.press("enter")


def bubbles(app, role: str):
    return [b for b in app.chat.query(".message") if b.role == role]


async def test_send_and_stream_reply():
    backend = ScriptedBackend(delay=0.005)
    app = make_app(backend=backend)
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await send(app, pilot, "Write a greet function")
        await wait_idle(app, pilot)
        users, replies = bubbles(app, "user"), bubbles(app, "assistant")
        assert [u.content for u in users] == ["Write a greet function"]
        assert replies[0].content == "".join(backend.tokens)
        assert "```python" in replies[0].content
        sent = backend.requests[0][0]
        assert sent[0]["role"] == "system"
        assert sent[-1] == {"role": "user", "content": "Write a greet function"}
        assert app.chat.messages[-1]["role"] == "assistant"
        gen = str(app.chat.stats.query_one("#gen").render())
        assert gen  # rendered
        assert app.chat.last_stats["tok_s"] == pytest.approx(123.4)
        assert app.chat.last_stats["completion"] == len(backend.tokens)
        # persisted
        store = app.store
        conv = store.list()[0]
        assert conv.title == "Write a greet function" and conv.n_messages == 2


class Gated(ScriptedBackend):
    """Loads only when the test opens the gate (timing-free on a loaded machine)."""

    def __init__(self, **kw):
        import threading

        super().__init__(**kw)
        self.gate = threading.Event()

    def load(self, progress_cb):
        progress_cb(0, 0, "resolve")
        for done in (0, 50_000_000, 100_000_000):
            progress_cb(done, 200_000_000, "download")
        self.gate.wait(30)
        super().load(progress_cb)


async def test_message_before_model_ready_is_queued():
    backend = Gated(delay=0.001)
    app = make_app(backend=backend)
    async with app.run_test(size=(110, 36)) as pilot:
        await pilot.pause(0.05)
        assert not app.ready
        await send(app, pilot, "hello early")
        assert app.chat.waiting and not backend.requests
        backend.gate.set()
        await wait_idle(app, pilot)
        assert len(backend.requests) == 1
        assert bubbles(app, "assistant")[0].content


async def test_escape_cancels_and_input_stays_responsive():
    backend = ScriptedBackend(tokens=[f"w{i} " for i in range(400)], delay=0.01)
    app = make_app(backend=backend)
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await send(app, pilot, "long please")
        await until(pilot, lambda: app.chat.streaming)
        await pilot.press("a", "b", "c")
        assert app.chat.prompt.text == "abc"
        await pilot.press("escape")
        await wait_idle(app, pilot)
        reply = bubbles(app, "assistant")[0]
        assert 0 < len(reply.content.split()) < 400
        assert reply.border_subtitle == "stopped"
        assert app.store.messages(app.chat.conversation_id)[-1]["content"] == reply.content


async def test_ctrl_n_clears_chat():
    app = make_app()
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await send(app, pilot, "first chat")
        await wait_idle(app, pilot)
        first_id = app.chat.conversation_id
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.chat.messages == [] and app.chat.conversation_id is None
        assert not list(app.chat.query(".message"))
        assert app.chat.query(".welcome")
        await send(app, pilot, "second chat")
        await wait_idle(app, pilot)
        assert app.chat.conversation_id != first_id
        assert len(app.store.list()) == 2


async def test_load_failure_is_shown_whole_in_a_dialog():
    long_error = "file is not GGUF: " + " ".join(f"detail{i}" for i in range(60)) + " THE-END"
    app = make_app(backend=ScriptedBackend(fail_load=long_error))
    async with app.run_test(size=(110, 36)) as pilot:
        await until(pilot, lambda: app.load_error is not None)
        assert app.load_error == long_error
        await until(pilot, lambda: type(app.screen).__name__ == "ErrorDialog")
        await pilot.pause(0.1)
        shown = " ".join(str(app.screen.query_one("#error-text").render()).split())
        assert shown == long_error  # all of it, wrapped, not cut off
        assert "RuntimeError" in app.screen.query_one("#error-detail").text  # the traceback
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.chat
        assert "failed" in str(app.chat.stats.query_one("#load-stage").render())
        await send(app, pilot, "hi")
        await until(pilot, lambda: bool(bubbles(app, "error")))


async def test_history_resume_rename_delete_export(tmp_path):
    from textual.widgets import DataTable

    store = HistoryStore()
    a = store.create("Alpha chat", "m")
    store.add_message(a, "user", "alpha question")
    store.add_message(a, "assistant", "alpha **answer**")
    b = store.create("Beta chat", "m")
    store.add_message(b, "user", "beta question")
    app = make_app(store=store)
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("f2")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        assert table.row_count == 2
        # newest first: Beta, then Alpha. Rename Beta.
        await pilot.press("r")
        await pilot.pause()
        inp = app.screen.query_one("#dialog-input")
        inp.value = "Beta renamed"
        await pilot.press("enter")
        await pilot.pause()
        assert store.get(b).title == "Beta renamed"
        # export Alpha
        await pilot.press("down", "e")
        await pilot.pause()
        out = tmp_path / "alpha.md"
        app.screen.query_one("#dialog-input").value = str(out)
        await pilot.press("enter")
        await pilot.pause()
        text = out.read_text()
        assert text.startswith("# Alpha chat") and "alpha **answer**" in text and "## You" in text
        # delete Beta (first row)
        await pilot.press("up", "d")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert [c.id for c in store.list()] == [a]
        assert table.row_count == 1
        # resume Alpha
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is app.chat
        assert app.chat.conversation_id == a
        assert [m["content"] for m in app.chat.messages] == ["alpha question", "alpha **answer**"]
        assert len(list(app.chat.query(".message"))) == 2
        # continue it
        await send(app, pilot, "follow up")
        await wait_idle(app, pilot)
        assert store.get(a).n_messages == 4


async def test_settings_persist():
    app = make_app()
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("f4")
        await pilot.pause()
        scr = app.screen
        scr.query_one("#system-prompt").text = "You are terse."
        scr.query_one("#temperature").value = "0.2"
        scr.query_one("#top-p").value = "0.5"
        scr.query_one("#max-tokens").value = "abc"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is scr  # invalid: stays open with an error
        assert "integer" in str(scr.query_one("#settings-error").render())
        scr.query_one("#max-tokens").value = "3"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is app.chat
        assert app.settings.temperature == 0.2
        await send(app, pilot, "hi")
        await wait_idle(app, pilot)
        msgs, params = app.backend.requests[-1]
        assert msgs[0] == {"role": "system", "content": "You are terse."}
        assert params.max_tokens == 3 and params.top_p == 0.5
        assert bubbles(app, "assistant")[0].border_subtitle == "max tokens reached"
    saved = json.loads((data_dir() / "chat_settings.json").read_text())
    assert saved["temperature"] == 0.2 and saved["max_tokens"] == 3
    assert Settings.load().system_prompt == "You are terse."


async def test_model_picker_lists_catalog_and_switches(tmp_path, monkeypatch):
    from textual.widgets import DataTable

    from edgerun.catalog import load_catalog

    models = tmp_path / "models"
    models.mkdir()
    (models / "my-local.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("EDGERUN_MODELS", str(models))
    made = []

    def factory(spec, n_ctx):
        made.append(spec)
        return ScriptedBackend(model=spec)

    app = make_app(backend_factory=factory)
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        names = [table.get_row_at(i)[1] for i in range(table.row_count)]
        assert set(load_catalog()) <= set(names) and "my-local" in names
        statuses = {table.get_row_at(i)[1]: table.get_row_at(i)[4] for i in range(table.row_count)}
        assert statuses["my-local"] == "downloaded"
        assert all(statuses[n] == "pull to use" for n in load_catalog())
        while table.get_row_at(table.cursor_row)[1] != "my-local":
            await pilot.press("down")
        await pilot.press("enter")
        await wait_idle(app, pilot)
        assert made == [str(models / "my-local.gguf")]
        assert app.screen is app.chat and app.model_name == str(models / "my-local.gguf")


async def test_model_picker_pull_progress(tmp_path, monkeypatch):
    from edgerun.catalog import load_catalog
    from edgerun.tui.screens.models import ModelPickerScreen

    monkeypatch.setenv("EDGERUN_MODELS", str(tmp_path / "models"))
    calls = []

    def fake_pull(name, progress):
        for i in range(5):
            progress(i * 10, 40, "download")
        calls.append(name)
        return tmp_path / "x.gguf"

    app = make_app()
    result = []
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        app.push_screen(ModelPickerScreen(pull_fn=fake_pull), result.append)
        await pilot.pause()
        await pilot.press("enter")
        for _ in range(50):
            await pilot.pause(0.02)
            if result:
                break
    assert calls == [sorted(load_catalog())[0]] and result == calls


async def test_command_palette_has_app_commands():
    app = make_app()
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"settings")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "SettingsScreen"


async def test_export_current_chat(tmp_path):
    app = make_app()
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        await send(app, pilot, "export me")
        await wait_idle(app, pilot)
        app.chat.action_export()
        await pilot.pause()
        app.screen.query_one("#dialog-input").value = str(tmp_path / "out" / "c.md")
        await pilot.press("enter")
        await pilot.pause()
    text = (tmp_path / "out" / "c.md").read_text()
    assert "export me" in text and "def greet" in text


def test_placement_text_and_runner_plan():
    from edgerun.tui.backend import all_cpu, placement_from_runner
    from edgerun.tui.widgets.stats import placement_text

    class Plan:
        layers = [{"attn": "gpu", "ffn": "cpu"}, {"attn": "cuda", "ffn": "gpu"}]

    class R:
        placement = Plan()

    p = placement_from_runner(R(), 2)
    assert p == {0: {"attn": "gpu", "ffn": "cpu"}, 1: {"attn": "gpu", "ffn": "gpu"}}
    assert placement_from_runner(object(), 3) == all_cpu(3)
    t = placement_text(all_cpu(24)).plain
    assert "attn CCCCCCCC CCCCCCCC" in t and "all on CPU" in t
    assert "3/4 on GPU" in placement_text(p).plain


def test_register_adds_chat_subcommand():
    import argparse

    from edgerun.cli.chat import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["chat", "-m", "x.gguf", "--threads", "2", "--ctx", "512", "--url", "http://h:1"])
    assert (args.model, args.threads, args.ctx, args.url) == ("x.gguf", 2, 512, "http://h:1")
    assert callable(args.func)


def test_http_backend_streams_sse():
    import httpx

    from edgerun.tui.backend import HttpBackend

    chunks = [
        {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "Hel"}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m1"}]})
        seen.update(json.loads(request.content))
        seen["auth"] = request.headers.get("authorization")
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    transport = httpx.MockTransport(handler)
    orig_client, orig_get = httpx.Client, httpx.get
    try:
        httpx.Client = lambda **kw: orig_client(transport=transport, **kw)
        httpx.get = lambda url, **kw: orig_client(transport=transport).get(url, **kw)
        be = HttpBackend("http://srv/v1", api_key="k", model=None)
        be.load(lambda d, t, s: None)
        assert be.model == "m1"
        from edgerun.text.sampling import SamplingParams

        evs = list(be.stream_chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=5)))
    finally:
        httpx.Client, httpx.get = orig_client, orig_get
    assert "".join(e.text for e in evs) == "Hello"
    assert evs[-1].finish_reason == "stop" and evs[-1].usage.prompt_tokens == 7
    assert seen["stream"] is True and seen["stream_options"] == {"include_usage": True}
    assert seen["auth"] == "Bearer k" and seen["max_tokens"] == 5


async def test_ctrl_b_toggles_side_panel():
    app = make_app()
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_idle(app, pilot)
        assert app.chat.stats.display
        await pilot.press("ctrl+b")
        assert not app.chat.stats.display
        await pilot.press("ctrl+b")
        assert app.chat.stats.display


async def test_pull_progress_shows_in_side_panel():
    backend = Gated()
    app = make_app(backend=backend)
    async with app.run_test(size=(110, 36)) as pilot:
        await until(pilot, lambda: "downloading" in str(app.chat.stats.query_one("#load-stage").render()))
        assert "MB" in str(app.chat.stats.query_one("#load-stage").render())
        assert app.chat.stats.query_one("#load-bar").display
        backend.gate.set()
        await wait_idle(app, pilot)
        assert not app.chat.stats.query_one("#load-bar").display
