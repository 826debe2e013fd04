"""Pilot tests of the chat app for coding work (issue 18): the multi-line editor and paste,
attachments, regenerate, edit-and-resend, copy, settings, the loop guard, completion mode,
the model file browser and the side panel. Scripted backend, no model needed."""

from __future__ import annotations

import base64
import re

import pytest
from textual import events

from edgerun.tui.backend import ScriptedBackend
from edgerun.tui.settings import Settings

pytestmark = [pytest.mark.timeout(90), pytest.mark.anyio]

SIZE = (120, 40)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGERUN_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)


class Answers(ScriptedBackend):
    """A scripted backend that gives a different answer to each request."""

    def __init__(self, answers: list[list[str]], **kw) -> None:
        super().__init__(tokens=answers[0], **kw)
        self.answers = answers

    def _stream(self, prompt, params):
        self.tokens = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
        return super()._stream(prompt, params)


def make_app(**kw):
    from edgerun.tui.app import ChatApp

    backend = kw.pop("backend", None) or ScriptedBackend(delay=0.002)
    return ChatApp(backend, freeze_stats=kw.pop("freeze_stats", True), **kw)


async def until(pilot, cond, timeout: float = 15.0) -> None:
    """Poll `cond()` until true (fixed sleeps flake on a loaded 2-core machine)."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


async def idle(app, pilot) -> None:
    await until(pilot, lambda: app.ready and not app.chat.streaming and not app.chat.waiting)
    await pilot.pause(0.05)


def bubbles(app, role: str):
    return [b for b in app.chat.query(".message") if b.role == role]


async def paste(app, pilot, text: str) -> None:
    """What the driver does with a bracketed paste: one Paste event to the focused widget."""
    app.chat.prompt.focus()
    await pilot.pause()
    app.post_message(events.Paste(text))  # the app forwards it to the focused widget
    await pilot.pause(0.05)


CODE_40 = "\n".join(f"    x{i} = compute({i})  # line {i}" for i in range(40))


# ---- input ---------------------------------------------------------------------------------------


async def test_paste_of_40_lines_arrives_whole_and_enter_sends_it():
    backend = ScriptedBackend(delay=0.001)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await pilot.press(*"Fix the bug:")
        await pilot.press("ctrl+j")  # the documented new-line key
        await paste(app, pilot, "def f():\n" + CODE_40)
        assert app.chat.prompt.text.count("\n") == 41
        assert not backend.requests  # nothing sent by the paste's newlines
        await pilot.press("enter")
        await idle(app, pilot)
        sent = backend.requests[0][0][-1]["content"]
        assert sent == "Fix the bug:\ndef f():\n" + CODE_40
        assert len(backend.requests) == 1 and app.chat.prompt.text == ""
        bubble = bubbles(app, "user")[0]
        assert bubble.content == sent
        # shown as typed: one screen line per line, indentation kept (not one Markdown paragraph)
        strips = bubble.render_lines(bubble.region.reset_offset)
        on_screen = ["".join(seg.text for seg in strip) for strip in strips]
        assert sum("= compute(" in t for t in on_screen) == 40
        assert any("│ def f():" in t for t in on_screen)
        assert any("│     x39 = compute(39)  # line 39" in t for t in on_screen)


async def test_up_in_empty_editor_recalls_last_message():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.prompt.set_text("first line\nsecond line")
        await pilot.press("enter")
        await idle(app, pilot)
        await pilot.press("up")
        assert app.chat.prompt.text == "first line\nsecond line"
        # Up with text in the editor moves the cursor instead
        await pilot.press("up")
        assert app.chat.prompt.text == "first line\nsecond line"


async def test_file_command_attaches_with_token_count(tmp_path):
    src = tmp_path / "bug.py"
    src.write_text("def add(a, b):\n    return a - b\n")
    backend = ScriptedBackend(delay=0.001)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.prompt.set_text(f"/file {src}")
        await pilot.press("enter")
        await pilot.pause()
        chip = str(app.chat.query_one("#attachments").render())
        att = app.chat.attachments[0]
        assert att.tokens == backend.count_tokens(att.as_markdown()) and att.exact
        assert f"bug.py · {att.tokens} tokens" in chip
        assert not backend.requests and app.chat.prompt.text == ""
        app.chat.prompt.set_text("Why does add subtract?")
        await pilot.press("enter")
        await idle(app, pilot)
        sent = backend.requests[0][0][-1]["content"]
        assert "```python\ndef add(a, b):\n    return a - b\n```" in sent
        assert sent.endswith("Why does add subtract?")
        assert not app.chat.attachments and not app.chat.query_one("#attachments").display


async def test_file_that_does_not_fit_is_refused(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("word " * 5000)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02")
    app = make_app(backend=ScriptedBackend(n_ctx=1024))
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        assert not app.chat.attach(big)
        assert not app.chat.attach(binary)
        assert not app.chat.attach(tmp_path / "missing.py")
        await pilot.pause()
        texts = [str(n.message) for n in app._notifications]
        assert any("Not attached: big.txt is 5" in t and "of the 1024-token context" in t for t in texts)
        assert any("binary file" in t for t in texts)
        assert any("no such file" in t for t in texts)
        assert app.chat.attachments == []


async def test_dropped_path_attaches_the_file(tmp_path):
    src = tmp_path / "my notes.md"
    src.write_text("# Notes\n\nuse a dict\n")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await paste(app, pilot, f"'{src}'")  # terminals quote a dropped path with spaces
        assert [a.name for a in app.chat.attachments] == ["my notes.md"]
        assert app.chat.prompt.text == ""
        await paste(app, pilot, "see " + str(src))  # not a bare path: ordinary text
        assert app.chat.prompt.text == "see " + str(src)


# ---- replies -------------------------------------------------------------------------------------


async def test_regenerate_keeps_both_answers_and_browses_them():
    backend = Answers([["First ", "answer."], ["Second ", "answer."]], delay=0.002)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.send("Explain recursion")
        await idle(app, pilot)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(backend.requests) == 2)
        await idle(app, pilot)
        # the regenerated request is the same turn, without the first answer
        assert backend.requests[1][0] == backend.requests[0][0]
        [bubble] = bubbles(app, "assistant")
        assert bubble.content == "Second answer."
        assert bubble.border_subtitle.startswith("‹ 2/2 ›")
        await pilot.press("alt+left")
        await pilot.pause()
        assert bubble.content == "First answer." and bubble.border_subtitle.startswith("‹ 1/2 ›")
        assert app.chat.messages[-1]["content"] == "First answer."
        stored = app.store.messages(app.chat.conversation_id)
        assert stored[-1]["variants"] == ["First answer.", "Second answer."]
        assert stored[-1]["content"] == "First answer."
        await pilot.press("alt+right")
        await pilot.pause()
        assert bubble.content == "Second answer."
        # a resumed chat keeps both answers and the one shown
        cid = app.chat.conversation_id
        await pilot.press("ctrl+n")
        app.chat.load_conversation(cid)
        await pilot.pause()
        [bubble] = bubbles(app, "assistant")
        assert bubble.content == "Second answer." and "2/2" in bubble.border_subtitle
        await pilot.press("alt+left")
        await pilot.pause()
        assert bubble.content == "First answer."


async def test_edit_and_resend_replaces_the_last_turn():
    backend = Answers([["one"], ["two"], ["three"]], delay=0.002)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.send("Hello")
        await idle(app, pilot)
        app.chat.send("Write a sort in C")
        await idle(app, pilot)
        await pilot.press("ctrl+g")
        assert app.chat.prompt.text == "Write a sort in C" and app.chat.editing
        assert "Editing your last message" in str(app.chat.query_one("#attachments").render())
        app.chat.prompt.set_text("Write a sort in Rust")
        await pilot.press("enter")
        await idle(app, pilot)
        sent = backend.requests[-1][0]
        assert [m["content"] for m in sent[1:]] == ["Hello", "one", "Write a sort in Rust"]
        assert [m["content"] for m in app.chat.messages] == ["Hello", "one", "Write a sort in Rust", "three"]
        assert [b.content for b in app.chat.query(".message")] == app_contents(app)
        stored = [m["content"] for m in app.store.messages(app.chat.conversation_id)]
        assert stored == ["Hello", "one", "Write a sort in Rust", "three"]
        assert not app.chat.editing and not app.chat.query_one("#attachments").display
        # Esc leaves edit mode without sending
        await pilot.press("ctrl+g")
        await pilot.press("escape")
        assert not app.chat.editing and app.chat.prompt.text == "" and len(backend.requests) == 3


def app_contents(app):
    return [m["content"] for m in app.chat.messages]


def decode(seq: str) -> str:
    """The text inside an OSC 52 "set clipboard" sequence."""
    payload = re.fullmatch(r"\x1b\]52;c;([A-Za-z0-9+/=]*)\x07", seq).group(1)
    return base64.b64decode(payload).decode()


async def test_copy_emits_osc52_for_a_code_block_and_the_whole_reply():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        written: list[str] = []
        orig = app._driver.write
        app._driver.write = lambda data: (written.append(data), orig(data))[1]
        await idle(app, pilot)
        app.chat.send("greet function please")
        await idle(app, pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert type(app.screen).__name__ == "CopyDialog"
        await pilot.press("1")
        await pilot.pause()
        seqs = [w for w in written if w.startswith("\x1b]52;c;")]
        assert seqs, "an OSC 52 sequence was written"
        assert decode(seqs[-1]) == 'def greet(name: str) -> str:\n    return f"Hello, {name}!"'
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("2")
        await pilot.pause()
        assert decode([w for w in written if "]52;" in w][-1]) == app.chat.messages[-1]["content"]
        texts = [str(n.message) for n in app._notifications]
        assert any("OSC 52" in t and "clipboard.txt" in t for t in texts)  # the fallback is named


async def test_long_code_lines_scroll_instead_of_clipping():
    long_line = "x = [" + ", ".join(str(i) for i in range(80)) + "]"
    backend = ScriptedBackend(tokens=["```python\n", long_line, "\n```"], delay=0.001)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.send("long line")
        await idle(app, pilot)
        await pilot.pause(0.2)
        fence = app.chat.query("MarkdownFence").last()
        assert fence.virtual_size.width > fence.size.width  # wider than the bubble...
        assert fence.max_scroll_x > 0 and fence.styles.scrollbar_size_horizontal == 1  # ...and scrollable
        fence.scroll_to(x=fence.max_scroll_x, animate=False)
        await pilot.pause()
        assert fence.scroll_x == fence.max_scroll_x


# ---- controls ------------------------------------------------------------------------------------


async def test_settings_reach_the_sampler():
    backend = ScriptedBackend(delay=0.001, n_ctx=2048)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await pilot.press("f4")
        await pilot.pause()
        scr = app.screen
        for field, value in {"#seed": "1234", "#top-k": "7", "#min-p": "0.2", "#repeat-penalty": "1.3",
                             "#repeat-last-n": "16", "#max-tokens": "0", "#temperature": "0.4"}.items():
            scr.query_one(field).value = value
        scr.query_one("#stop").text = "\\n\\nUser:\nEND"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is app.chat
        app.chat.send("hi")
        await idle(app, pilot)
        params = backend.requests[-1][1]
        assert (params.seed, params.top_k, params.min_p, params.repeat_penalty, params.repeat_last_n) == \
            (1234, 7, 0.2, 1.3, 16)
        assert params.temperature == 0.4 and params.stop == ["\n\nUser:", "END"]
        assert params.max_tokens == 2048  # unlimited: up to the context
        assert Settings.load().seed == 1234 and Settings.load().stop == ["\n\nUser:", "END"]
        # the same parameters drive the real sampler: a seed reproduces its draws
        import numpy as np

        from edgerun.text.sampling import Sampler

        logits = np.random.default_rng(0).normal(size=500).astype(np.float32)
        draws = [[Sampler(params).sample(logits) for _ in range(1)] for _ in range(2)]
        assert draws[0] == draws[1]


async def test_bad_settings_are_refused_with_the_field_named():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await pilot.press("f4")
        await pilot.pause()
        scr = app.screen
        scr.query_one("#min-p").value = "1.5"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is scr and "min-p" in str(scr.query_one("#settings-error").render())
        scr.query_one("#min-p").value = "0.1"
        scr.query_one("#top-k").value = "x"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "top-k must be an integer" in str(scr.query_one("#settings-error").render())


async def test_per_chat_overrides_are_saved_with_the_chat():
    backend = ScriptedBackend(delay=0.001)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.send("chat A")
        await idle(app, pilot)
        chat_a = app.chat.conversation_id
        await pilot.press("f4")
        await pilot.pause()
        app.screen.query_one("#temperature").value = "0.1"
        app.screen.query_one("#seed").value = "42"
        app.screen.query_one("#chat-only").value = True
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.store.overrides(chat_a) == {"temperature": 0.1, "seed": 42}
        assert app.settings.temperature == 0.7  # the global settings are untouched
        app.chat.send("again")
        await idle(app, pilot)
        assert backend.requests[-1][1].temperature == 0.1 and backend.requests[-1][1].seed == 42
        await pilot.press("ctrl+n")
        app.chat.send("chat B")
        await idle(app, pilot)
        assert backend.requests[-1][1].temperature == 0.7 and backend.requests[-1][1].seed is None
        app.chat.load_conversation(chat_a)
        app.chat.send("back in A")
        await idle(app, pilot)
        assert backend.requests[-1][1].temperature == 0.1


async def test_context_size_change_reloads_the_model():
    made = []

    def factory(spec, n_ctx):
        made.append((spec, n_ctx))
        return ScriptedBackend(model=spec, n_ctx=n_ctx)

    app = make_app(backend=ScriptedBackend(model="m"), backend_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await pilot.press("f4")
        await pilot.pause()
        app.screen.query_one("#n-ctx").value = "8192"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: made and app.ready)
        assert made == [("m", 8192)]
        assert app.session.view.n_ctx == 8192


async def test_context_size_of_a_server_is_not_ours_and_says_so():
    class Remote(ScriptedBackend):
        local_context = False

    made = []
    app = make_app(backend=Remote(), backend_factory=lambda spec, n: made.append(spec))
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await pilot.press("f4")
        await pilot.pause()
        app.screen.query_one("#n-ctx").value = "8192"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert made == [] and app.ready
        assert any("this server decides its own" in str(n.message) for n in app._notifications)


async def test_loop_guard_stops_a_repeating_reply():
    para = "The function returns the sum of the list. "
    backend = ScriptedBackend(tokens=["Sure. "] + [para] * 40, delay=0.003)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.send("sum a list")
        await idle(app, pilot)
        [bubble] = bubbles(app, "assistant")
        assert "repeating itself" in bubble.border_subtitle
        assert bubble.content.count(para) < 20  # stopped well before the 40 copies
        assert any("kept repeating" in str(n.message) for n in app._notifications)


def test_find_loop():
    from edgerun.tui.loopguard import find_loop

    para = "It returns the sum of the numbers in the list. "
    assert find_loop("Intro. " + para * 5) is not None
    assert find_loop("Intro. " + para * 5).span == para
    assert find_loop("Intro. " + para * 2) is None  # twice is not a loop yet
    assert find_loop("=" * 300) is None  # a ruler: period shorter than the minimum span
    code = "def f():\n    pass\n\ndef g():\n    pass\n\ndef h():\n    pass\n"
    assert find_loop(code) is None
    assert find_loop("    return 0\n" * 4) is None  # short repeats do not add up to a loop
    assert find_loop("    return 0\n" * 20) is not None


# ---- models --------------------------------------------------------------------------------------


async def test_base_model_opens_in_completion_mode():
    backend = Answers([[" = 1\n"], [" = 2\n"]], chat_template=False, delay=0.001)
    app = make_app(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await pilot.pause(0.1)
        notices = bubbles(app, "notice")
        assert notices and "Completion mode" in notices[0].content
        assert "completion mode" in str(app.chat.stats.query_one("#model-name").render())
        app.chat.send("x")
        await idle(app, pilot)
        app.chat.send("y")
        await idle(app, pilot)
        # raw text, no template and no system prompt: the conversation is one document
        assert backend.requests[0][0] == "x"
        assert backend.requests[1][0] == "x = 1\n\ny"
        assert "<|im_start|>" not in backend.requests[1][0]


async def test_file_picker_browses_for_gguf_files(tmp_path, monkeypatch):
    from textual.widgets import DataTable, DirectoryTree

    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "sub" / "deep-model.gguf").write_bytes(b"GGUF")
    (models / "notes.txt").write_text("x")
    (models / ".hidden").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.gguf").write_bytes(b"GGUF")
    made = []

    def factory(spec, n_ctx):
        made.append(spec)
        return ScriptedBackend(model=spec)

    app = make_app(backend_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        await pilot.press("b")
        await pilot.pause(0.3)
        assert type(app.screen).__name__ == "FilePickerScreen"
        tree = app.screen.query_one(DirectoryTree)
        await until(pilot, lambda: len(tree.root.children) > 0)
        names = sorted(str(c.label) for c in tree.root.children)
        assert names == ["sub"]  # folders and .gguf files only; hidden folders and .txt left out
        tree.root.children[0].expand()
        await until(pilot, lambda: len(tree.root.children[0].children) > 0)
        assert [str(c.label) for c in tree.root.children[0].children] == ["deep-model.gguf"]
        # typing a folder shows it; typing a file opens it
        inp = app.screen.query_one("#files-path")
        inp.value = str(elsewhere / "other.gguf")
        inp.focus()
        await pilot.press("enter")
        await idle(app, pilot)
        assert made == [str(elsewhere / "other.gguf")] and app.screen is app.chat
        # ... and it is now a recent model, listed first by the picker
        from edgerun.tui.settings import remember_model

        remember_model(str(elsewhere / "other.gguf"))  # the in-process backend does this on load
        await pilot.press("f3")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        assert table.get_row_at(0)[1:3] == ["other", "recent"]


# ---- look ----------------------------------------------------------------------------------------


async def test_sparkline_and_context_bar_after_a_reply():
    from textual.widgets import Sparkline

    backend = ScriptedBackend(tokens=[f"t{i} " for i in range(60)], delay=0.01, n_ctx=200)
    app = make_app(backend=backend, freeze_stats=False)  # frozen apps keep the sparkline still
    async with app.run_test(size=SIZE) as pilot:
        await idle(app, pilot)
        app.chat.send("count")
        await idle(app, pilot)
        spark = app.chat.stats.query_one(Sparkline)
        assert len(spark.data) >= 2 and all(v > 0 for v in spark.data)
        bar = app.chat.stats.query_one("#ctx-bar").render()
        assert f"{backend.ctx_used} / 200 tok" in str(bar)


def test_context_bar_colours():
    from edgerun.tui.widgets.stats import context_bar

    def colour(used):
        t = context_bar(used, 100, width=10)
        return str(t.spans[0].style)

    assert colour(10) == "#22c55e" and colour(80) == "#eab308" and colour(95) == "bold #ef4444"
    assert "95 / 100 tok · 95%" in context_bar(95, 100).plain
    assert context_bar(0, 0).plain == "context –"


async def test_error_toast_is_not_cut_off(tmp_path):
    """Error text is shown as written: brackets in a path are not eaten as markup, and a long
    message wraps in full."""
    from textual.widgets._toast import Toast

    missing = tmp_path / ("[b]odd name [Errno] " + "long-" * 30 + "END.py")
    app = make_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await idle(app, pilot)
        assert not app.chat.attach(missing)
        await until(pilot, lambda: len(app.screen.query(Toast)) > 0)
        await pilot.pause(0.2)
        toast = app.screen.query(Toast).last()
        lines = toast.render_lines(toast.region.reset_offset)
        text = "".join("".join(seg.text for seg in line).strip("▌ ") for line in lines)
        squash = lambda t: "".join(t.split())  # wrapping drops the spaces at line ends
        assert squash(f"Cannot attach: no such file: {missing}") in squash(text)


# ---- with a real model ---------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.timeout(600)
async def test_real_base_model_completion_mode_and_seeded_regenerate(gemma_path):
    """gemma-3-270m has no chat template: the app opens it in completion mode and sends raw
    text (no made-up ChatML); with a fixed seed a regenerated answer repeats the first one,
    so the seed reaches the engine's sampler."""
    from edgerun.tui.backend import InProcessBackend

    settings = Settings(temperature=0.9, seed=7, max_tokens=12, n_ctx=512)
    backend = InProcessBackend(str(gemma_path), threads=2, ctx=512)
    app = make_app(backend=backend, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, timeout=300)
        await pilot.pause(0.1)
        assert app.session.view.mode == "completion" and bubbles(app, "notice")
        tokens, exact = app.session.count_tokens("def fibonacci(n):")
        assert exact and tokens == len(backend.runner.tokenizer.encode("def fibonacci(n):", add_bos=False))
        app.chat.send("The capital of France is")
        await until(pilot, lambda: not app.chat.streaming, timeout=300)
        first = app.chat.messages[-1]["content"]
        assert first.strip() and "<|im_" not in first and "<start_of_turn>" not in first
        await pilot.press("ctrl+r")
        # the second answer can be done before a poll sees it streaming: wait for the answer itself
        await until(pilot, lambda: len(app.chat.messages[-1].get("variants") or []) == 2
                    and not app.chat.streaming, timeout=300)
        assert app.chat.messages[-1]["variants"] == [first, first]


# ---- the session ---------------------------------------------------------------------------------


async def test_session_publishes_load_states_to_subscribers():
    """The app's ModelSession holds backend and state; screens learn of changes only through
    its `changed` signal (loading -> ready, then loading -> failed on a bad switch)."""
    seen = []

    def factory(spec, n_ctx):
        return ScriptedBackend(model=spec, fail_load="no such model: " + spec)

    app = make_app(backend=ScriptedBackend(model="good"), backend_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        app.session.changed.subscribe(app.chat, lambda view: seen.append((view.state, view.model_name)))
        await idle(app, pilot)
        app.session.switch("bad")
        await until(pilot, lambda: app.session.view.state == "failed")
        await pilot.pause(0.1)
        assert seen[-1] == ("failed", "bad")
        assert ("loading", "bad") in seen
        assert app.session.view.error == "no such model: bad"
        assert app.sub_title == "bad"  # the app follows the same signal
        assert type(app.screen).__name__ == "ErrorDialog"


def test_http_backend_sends_every_setting_and_completes_raw_text():
    """Over HTTP the settings go out under llama.cpp's server names; completion mode posts to
    /v1/completions; "no limit" leaves max_tokens to the server."""
    import json

    import httpx

    from edgerun.tui.backend import HttpBackend

    chunks = [{"choices": [{"text": " = 1", "finish_reason": None}]},
              {"choices": [{"text": "\n", "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    seen: list[tuple[str, dict]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m1", "context_length": 4096}]})
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    transport = httpx.MockTransport(handler)
    orig_client, orig_get = httpx.Client, httpx.get
    try:
        httpx.Client = lambda **kw: orig_client(transport=transport, **kw)
        httpx.get = lambda url, **kw: orig_client(transport=transport).get(url, **kw)
        be = HttpBackend("http://srv")
        be.load(lambda d, t, s: None)
        settings = Settings(seed=3, top_k=5, min_p=0.1, repeat_penalty=1.2, repeat_last_n=32,
                            stop=["END"], max_tokens=0)
        evs = list(be.stream_completion("x", settings.sampling_params(be.n_ctx)))
        chat = [{"role": "user", "content": "hi"}]
        list(be.stream_chat(chat, Settings(max_tokens=50).sampling_params(4096)))
    finally:
        httpx.Client, httpx.get = orig_client, orig_get
    assert "".join(e.text for e in evs) == " = 1\n" and evs[-1].finish_reason == "stop"
    path, sent = seen[0]
    assert path == "/v1/completions" and sent["prompt"] == "x" and "messages" not in sent
    assert (sent["seed"], sent["top_k"], sent["min_p"], sent["repeat_penalty"], sent["repeat_last_n"],
            sent["stop"]) == (3, 5, 0.1, 1.2, 32, ["END"])
    assert "max_tokens" not in sent  # unlimited: the server's own limit applies
    assert seen[1][0] == "/v1/chat/completions" and seen[1][1]["max_tokens"] == 50
