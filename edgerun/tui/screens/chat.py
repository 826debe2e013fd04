"""The main chat screen: conversation, prompt, live side panel."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input

from edgerun.tui.history import make_title
from edgerun.tui.widgets.messages import MessageBubble, MessageList
from edgerun.tui.widgets.stats import StatsPanel

if TYPE_CHECKING:
    from edgerun.tui.app import ChatApp
    from edgerun.tui.settings import Settings

FLUSH_S = 0.05  # at most ~20 UI updates a second while a reply streams
WELCOME = (
    "[b]edgerun chat[/b]\n\n"
    "Type a message and press [b]Enter[/b].\n"
    "[b]Esc[/b] stops a reply · [b]Ctrl+N[/b] new chat · [b]Ctrl+P[/b] commands · [b]Ctrl+Q[/b] quit\n"
    "[b]F2[/b] history · [b]F3[/b] models · [b]F4[/b] settings"
)


class ChatScreen(Screen):
    """Owns the current conversation and streams replies from the app's backend."""

    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("f2", "app.history", "History"),
        Binding("f3", "app.models", "Models"),
        Binding("f4", "app.settings", "Settings"),
        Binding("ctrl+b", "toggle_panel", "Panel"),
    ]

    def __init__(self) -> None:
        super().__init__(id="chat")
        self.messages: list[dict[str, str]] = []
        self.conversation_id: int | None = None
        self.streaming = False
        self.waiting = False  # a message was sent before the model was ready
        self._gen = 0
        self.last_stats: dict[str, Any] = {}

    @property
    def chat_app(self) -> ChatApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="body"):
            with Vertical(id="chat-pane"):
                yield MessageList(id="messages")
                yield Input(placeholder="Message the model…  (Enter to send, Esc to stop)", id="prompt")
            yield StatsPanel(id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MessageList).welcome(WELCOME)
        self.query_one("#prompt", Input).focus()
        self.chat_app.chat_mounted()

    @property
    def stats(self) -> StatsPanel:
        return self.query_one(StatsPanel)

    @property
    def message_list(self) -> MessageList:
        return self.query_one(MessageList)

    # ---- sending -------------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "prompt":
            return
        event.stop()
        self.send(event.value)

    def send(self, text: str) -> None:
        """Add a user message and start the reply (or queue it until the model is ready)."""
        text = text.strip()
        if not text:
            return
        if self.streaming or self.waiting:
            self.notify("A reply is still running: press Esc to stop it first.", severity="warning")
            return
        self.query_one("#prompt", Input).clear()
        app = self.chat_app
        if self.conversation_id is None:
            self.conversation_id = app.store.create(make_title(text), app.model_name)
        app.store.add_message(self.conversation_id, "user", text)
        self.messages.append({"role": "user", "content": text})
        self.message_list.add("user", text)
        if app.load_error:
            self.message_list.add("error", f"No model is loaded: {app.load_error}\n\n"
                                  "Open **Models** (F3) to pick another one.")
            return
        if not app.ready:
            self.waiting = True
            self.notify("The model is still loading; your message will be sent when it is ready.")
            return
        self.start_reply()

    def model_ready(self) -> None:
        """Called by the app when a model finished loading."""
        if self.waiting:
            self.waiting = False
            self.start_reply()

    def start_reply(self) -> None:
        """Stream the assistant's reply to the conversation so far."""
        app = self.chat_app
        self._gen += 1
        self.streaming = True
        bubble = self.message_list.add("assistant", "", title=app.model_name)
        bubble.add_class("streaming")
        bubble.border_subtitle = "thinking…"
        full = list(self.messages)
        if app.settings.system_prompt:
            full.insert(0, {"role": "system", "content": app.settings.system_prompt})
        self.stats.set_generation({**self.last_stats, "tok_s": None, "ttft_s": None, "completion": 0})
        self._generate(full, bubble, app.settings, self._gen, self.conversation_id)

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, messages: list[dict], bubble: MessageBubble, settings: Settings, gen: int,
                  conv_id: int | None) -> None:
        backend = self.chat_app.backend
        t0 = time.perf_counter()
        first: float | None = None
        n = 0
        pending = ""
        last_flush = 0.0
        final = None
        error: str | None = None
        try:
            params = settings.sampling_params()
            for ev in backend.stream_chat(messages, params):
                now = time.perf_counter()
                if ev.text or ev.token_ids:
                    if first is None:
                        first = now
                    n = max(n + max(len(ev.token_ids), 1), ev.usage.completion_tokens)
                    pending += ev.text
                if ev.finish_reason is not None:
                    final = ev
                    break
                if pending and now - last_flush >= FLUSH_S:
                    prompt = ev.usage.prompt_tokens or None
                    live = {"tok_s": (n - 1) / (now - first) if first and n > 1 and now > first else None,
                            "ttft_s": (first - t0) if first else None, "completion": n,
                            "prompt": prompt, "ctx_used": prompt + n if prompt else None}
                    if not self._ui(self._on_delta, bubble, pending, live, gen):
                        backend.cancel()
                        return
                    pending = ""
                    last_flush = now
        except Exception as e:  # noqa: BLE001 - shown in the chat
            error = f"{type(e).__name__}: {e}"
        t1 = time.perf_counter()
        summary: dict[str, Any] = {"completion": n}
        if final is not None:
            tm, us = final.timings, final.usage
            summary = {
                "tok_s": tm.decode_tok_s or ((n - 1) / (t1 - first) if first and n > 1 else None),
                "ttft_s": tm.ttft_s or ((first - t0) if first else None),
                "prompt": us.prompt_tokens or None,
                "completion": us.completion_tokens or n,
            }
            if final.finish_reason == "error":
                error = final.error or "generation failed"
        self._ui(self._on_finish, bubble, pending, final, error, summary, gen, conv_id)

    def _ui(self, fn: Any, *args: Any) -> bool:
        """Run `fn` on the UI thread; False when the app is already gone (quit mid-reply)."""
        try:
            self.app.call_from_thread(fn, *args)
        except RuntimeError:
            return False
        return True

    async def _on_delta(self, bubble: MessageBubble, text: str, live: dict[str, Any], gen: int) -> None:
        if gen != self._gen or not bubble.is_attached:
            return
        bubble.border_subtitle = "▍ streaming"
        await bubble.write(text)
        self.stats.set_generation({**self.last_stats, **{k: v for k, v in live.items() if v is not None}})

    async def _on_finish(self, bubble: MessageBubble, text: str, final: Any, error: str | None,
                         summary: dict[str, Any], gen: int, conv_id: int | None) -> None:
        content = bubble.content + text
        reason = final.finish_reason if final is not None else "error"
        app = self.chat_app
        if content and conv_id is not None:
            app.store.add_message(conv_id, "assistant", content)
        if gen != self._gen:
            return
        self.streaming = False
        if bubble.is_attached:
            await bubble.write(text)
            notes = {"abort": "stopped", "length": "max tokens reached", "error": "error"}
            note = notes.get(reason, "")
            if not note and summary.get("tok_s"):
                note = f"{summary.get('completion', 0)} tokens · {summary['tok_s']:.1f} tok/s"
            await bubble.finish(note)
            if not content:
                if reason == "abort":
                    bubble.update("*stopped before the first token*")
                else:
                    await bubble.remove()
        if content:
            self.messages.append({"role": "assistant", "content": content})
        if error:
            self.message_list.add("error", error)
        info = app.safe_info()
        self.last_stats = {**summary, "n_ctx": info.get("n_ctx"), "ctx_used": info.get("ctx_used")}
        self.stats.set_generation(self.last_stats)

    # ---- actions -------------------------------------------------------------------------------

    def action_stop(self) -> None:
        """Stop the streaming reply."""
        if self.streaming:
            self.chat_app.backend.cancel()
        elif self.waiting:
            self.waiting = False
            self.notify("Cancelled the queued message.")

    def action_toggle_panel(self) -> None:
        """Show or hide the side panel (more room for wide code)."""
        self.stats.display = not self.stats.display

    def action_new_chat(self) -> None:
        """Start an empty conversation (a running reply is stopped and kept in history)."""
        if self.streaming:
            self.chat_app.backend.cancel()
        self._gen += 1
        self.streaming = False
        self.waiting = False
        self.messages = []
        self.conversation_id = None
        self.message_list.welcome(WELCOME)
        self.query_one("#prompt", Input).focus()

    def load_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation and continue it."""
        self.action_new_chat()
        msgs = self.chat_app.store.messages(conversation_id)
        self.conversation_id = conversation_id
        self.messages = [m for m in msgs if m["role"] in ("user", "assistant")]
        lst = self.message_list
        lst.remove_children()
        for m in self.messages:
            lst.add(m["role"], m["content"])
        lst.anchor()
