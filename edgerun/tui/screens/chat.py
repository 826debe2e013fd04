"""The main chat screen: the conversation, the message editor, the live side panel.

The screen owns the conversation (its messages, answers, attachments and per-chat settings)
and streams replies in a worker. What it knows of the model comes from the app's
`ModelSession`, through the session's `changed` signal; it changes the session only by
calling its methods. Its own widgets talk to it through their messages.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header

from edgerun.tui.attach import AttachError, Attachment, read_text_file
from edgerun.tui.clipboard import OSC52_MAX_BYTES, code_blocks
from edgerun.tui.history import HistoryStore, conversation_markdown, make_title, slugify
from edgerun.tui.loopguard import find_loop
from edgerun.tui.screens import still_cursors
from edgerun.tui.settings import CHAT_FIELDS, Settings, data_dir
from edgerun.tui.widgets.messages import AttachmentBar, MessageBubble, MessageList
from edgerun.tui.widgets.prompt import NEWLINE_HELP, PromptInput
from edgerun.tui.widgets.stats import StatsPanel

if TYPE_CHECKING:
    from edgerun.tui.session import ModelSession, SessionView

FLUSH_S = 0.05  # at most ~20 UI updates a second while a reply streams
REPLY_RESERVE = 64  # tokens kept free for the template's wrapping and a first answer
WELCOME = (
    "[b]edgerun chat[/b]\n\n"
    f"Type a message: [b]Enter[/b] sends, [b]{NEWLINE_HELP}[/b] starts a new line, pasted code keeps "
    "its lines; [b]↑[/b] in an empty box recalls your last message.\n"
    "[b]/file PATH[/b] (or drop a file on the window) attaches a text file.\n"
    "[b]Ctrl+R[/b] regenerate · [b]Alt+←/→[/b] browse answers · [b]Ctrl+G[/b] edit the last message · "
    "[b]Ctrl+O[/b] copy code or reply\n"
    "[b]Esc[/b] stops a reply · [b]Ctrl+N[/b] new chat · [b]Ctrl+P[/b] commands · [b]Ctrl+Q[/b] quit\n"
    "[b]F2[/b] history · [b]F3[/b] models · [b]F4[/b] settings"
)
COMPLETION_NOTICE = (
    "**Completion mode.** {model} has no chat template (a base model), so there is no chat "
    "format to put your messages in. What you type is continued as plain text, and the "
    "conversation so far is the document it continues; the system prompt is not used."
)
LOOP_NOTE = "stopped: repeating itself"


@dataclass
class Reply:
    """What a reply worker hands back when it ends."""

    text: str = ""
    reason: str = "error"
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    looped: bool = False


class ChatScreen(Screen):
    """Owns the current conversation and streams replies from the session's backend."""

    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+g", "edit_last", "Edit last"),
        Binding("ctrl+o", "copy", "Copy"),
        Binding("alt+left", "browse(-1)", "Prev answer", show=False),
        Binding("alt+right", "browse(1)", "Next answer", show=False),
        Binding("f2", "history", "History"),
        Binding("f3", "app.models", "Models"),
        Binding("f4", "settings", "Settings"),
        Binding("ctrl+b", "toggle_panel", "Panel"),
    ]

    def __init__(self, session: ModelSession, store: HistoryStore, frozen_time: bool = False) -> None:
        super().__init__(id="chat")
        self.session = session
        self.store = store
        self.frozen_time = frozen_time
        self.messages: list[dict[str, Any]] = []
        self.conversation_id: int | None = None
        self.overrides: dict[str, Any] = {}
        self.attachments: list[Attachment] = []
        self.editing = False  # the editor holds the last user message for edit-and-resend
        self.streaming = False
        self.waiting = False  # a message was sent before the model was ready
        self.last_stats: dict[str, Any] = {}
        self._gen = 0
        self._view: SessionView = session.view
        self._shown_error: str | None = None
        self._mode_noted: str | None = None

    # ---- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="body"):
            with Vertical(id="chat-pane"):
                yield MessageList(id="messages")
                yield AttachmentBar(id="attachments")
                yield PromptInput(placeholder=f"Message the model…  (Enter send · {NEWLINE_HELP} new line · "
                                  "Esc stop)", id="prompt")
            yield StatsPanel(id="stats")
        yield Footer()

    def on_mount(self) -> None:
        still_cursors(self)  # here, not in the app's on_mount: that may run before this screen exists
        self.message_list.welcome(WELCOME)
        self._show_attachments()
        self.prompt.focus()
        self.session.changed.subscribe(self, self.on_session_changed)
        readings = getattr(self.app, "system_readings", None)
        if readings is not None:
            readings.subscribe(self, self.stats.set_system)
        self.on_session_changed(self.session.view)

    @property
    def stats(self) -> StatsPanel:
        """The side panel."""
        return self.query_one(StatsPanel)

    @property
    def message_list(self) -> MessageList:
        """The scrolling conversation."""
        return self.query_one(MessageList)

    @property
    def prompt(self) -> PromptInput:
        """The message editor."""
        return self.query_one("#prompt", PromptInput)

    @property
    def settings(self) -> Settings:
        """The settings for this chat: the global ones with this chat's overrides applied."""
        return self.session.settings.with_overrides(self.overrides)

    @property
    def completion_mode(self) -> bool:
        """True for a base model: the conversation is one text document to continue."""
        return self._view.mode == "completion"

    # ---- the session ---------------------------------------------------------------------------

    def on_session_changed(self, view: SessionView) -> None:
        """The model session changed: show it, and act on ready / failed."""
        before = self._view
        self._view = view
        stats = self.stats
        note = "completion mode (no chat template)" if view.mode == "completion" else ""
        stats.set_model(view.model_name, str(view.info.get("backend", "")), note)
        p = view.progress
        stats.set_progress(p.done, p.total, "error" if view.state == "failed" else p.stage)
        remote = str(view.info.get("backend", "")).startswith("http")
        stats.set_placement(view.info.get("placement") or {}, remote=remote)
        stats.set_generation({**self.last_stats, "n_ctx": view.info.get("n_ctx"),
                              "ctx_used": view.info.get("ctx_used", self.last_stats.get("ctx_used"))})
        if view.state == "ready" and before.state != "ready":
            if view.mode == "completion" and self._mode_noted != view.model_name:
                self._mode_noted = view.model_name
                self.message_list.add("notice", COMPLETION_NOTICE.format(model=view.model_name),
                                      title="Notice")
            if self.waiting:
                self.waiting = False
                self.start_reply()
        if view.state == "failed" and view.error and self._shown_error != view.error:
            self._shown_error = view.error
            self._load_failed(view)

    def _load_failed(self, view: SessionView) -> None:
        from edgerun.tui.screens.dialogs import ErrorDialog

        self.app.push_screen(ErrorDialog(f"Could not load {view.model_name}", view.error or "",
                                         view.error_detail))
        if self.waiting:
            self.waiting = False
            self.message_list.add("error", f"No model is loaded: {view.error}")

    # ---- the editor ----------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        event.stop()
        self.submit(event.text)

    @on(PromptInput.RecallLast)
    def _recall(self, event: PromptInput.RecallLast) -> None:
        event.stop()
        last = self._last_user()
        if last is not None:
            self.prompt.set_text(last["content"])

    @on(PromptInput.FileDropped)
    def _dropped(self, event: PromptInput.FileDropped) -> None:
        event.stop()
        self.attach(event.path)

    def submit(self, text: str) -> None:
        """What Enter does: run a `/file` command, or send the message."""
        stripped = text.strip()
        if stripped == "/file" or stripped.startswith("/file "):
            try:
                args = shlex.split(stripped[5:])
            except ValueError as e:
                self.notify(f"/file: {e}", severity="error", markup=False)
                return
            if len(args) != 1:
                self.notify("Usage: /file PATH (quote a path with spaces)", severity="warning")
                return
            if self.attach(Path(args[0])):
                self.prompt.clear()
            return
        if stripped == "/detach":
            self.attachments = []
            self._show_attachments()
            self.prompt.clear()
            return
        self.send(text)

    def attach(self, path: Path) -> bool:
        """Attach a text file to the next message, if it fits the context; say why not."""
        try:
            att = read_text_file(path)
        except (AttachError, OSError) as e:
            self.notify(f"Cannot attach: {e}", severity="error", timeout=10, markup=False)
            return False
        tokens, exact = self.session.count_tokens(att.as_markdown())
        att = Attachment(att.path, att.text, tokens, exact)
        n_ctx = self._view.n_ctx or self.settings.n_ctx
        fixed = self._fixed_tokens()
        need = fixed + sum(a.tokens for a in self.attachments) + tokens + REPLY_RESERVE
        if need > n_ctx:
            self.notify(f"Not attached: {att.name} is {'' if exact else '~'}{tokens} tokens; with the system "
                        f"prompt and the other attachments the message would need {need} of the "
                        f"{n_ctx}-token context. Raise the context size (F4) or attach less.",
                        severity="error", timeout=15, markup=False)
            return False
        self.attachments.append(att)
        self._show_attachments()
        self.notify(f"Attached {att.name} ({'' if exact else '~'}{tokens} tokens)", markup=False)
        return True

    def _fixed_tokens(self) -> int:
        """Tokens every prompt of this chat carries: the system prompt (chat mode)."""
        sp = self.settings.system_prompt
        return self.session.count_tokens(sp)[0] if sp and not self.completion_mode else 0

    def _show_attachments(self) -> None:
        self.query_one(AttachmentBar).show(self.attachments, self._view.n_ctx or self.settings.n_ctx,
                                           self.editing)

    # ---- sending -------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Add a user message and start the reply (or queue it until the model is ready)."""
        text = text.strip("\n")
        if not text.strip() and not self.attachments:
            return
        if self.streaming or self.waiting:
            self.notify("A reply is still running: press Esc to stop it first.", severity="warning")
            return
        if self.editing:
            self._drop_last_turn()
        content = "\n\n".join([*(a.as_markdown() for a in self.attachments), text] if text.strip()
                              else [a.as_markdown() for a in self.attachments])
        self.attachments = []
        self._show_attachments()
        self.prompt.clear()
        if self.conversation_id is None:
            self.conversation_id = self.store.create(make_title(text or content), self._view.model_name)
            if self.overrides:
                self.store.set_overrides(self.conversation_id, self.overrides)
        mid = self.store.add_message(self.conversation_id, "user", content)
        self.messages.append({"role": "user", "content": content, "id": mid})
        self.message_list.add("user", content)
        view = self._view
        if view.state == "failed":
            self.message_list.add("error", f"No model is loaded: {view.error}\n\n"
                                  "Open **Models** (F3) to pick another one.")
            return
        if view.state != "ready":
            self.waiting = True
            self.notify("The model is still loading; your message will be sent when it is ready.")
            return
        self.start_reply()

    def _last_user(self) -> dict[str, Any] | None:
        return next((m for m in reversed(self.messages) if m["role"] == "user"), None)

    def _drop_last_turn(self) -> None:
        """Forget the last user message and its answers (edit and resend replaces them)."""
        self.editing = False
        last = self._last_user()
        if last is None:
            return
        i = self.messages.index(last)
        del self.messages[i:]
        if self.conversation_id is not None and last.get("id") is not None:
            self.store.delete_from(self.conversation_id, last["id"])
        bubbles = list(self.message_list.query(".message"))
        users = [b for b in bubbles if b.role == "user"]
        if users:
            for b in bubbles[bubbles.index(users[-1]):]:
                b.remove()

    def _prompt_messages(self, settings: Settings) -> list[dict[str, str]]:
        msgs = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        if settings.system_prompt:
            msgs.insert(0, {"role": "system", "content": settings.system_prompt})
        return msgs

    def _document(self) -> str:
        """Completion mode: the conversation as one text; each answer continues its prompt."""
        out = ""
        for m in self.messages:
            if m["role"] == "user" and out:
                out += "\n"
            out += m["content"]
        return out

    def start_reply(self, regenerate: bool = False) -> None:
        """Stream an answer to the conversation so far (into the last answer's bubble when
        regenerating: the earlier answers stay in its list)."""
        self._gen += 1
        self.streaming = True
        settings = self.settings
        target: dict[str, Any] | None = None
        if regenerate:
            target = self.messages.pop()
            bubble = self.message_list.last("assistant")
            assert bubble is not None, "regenerate needs an answer on screen"
            bubble.restart()
        else:
            bubble = self.message_list.add_reply(self._view.model_name)
            bubble.add_class("streaming")
        bubble.set_note("thinking…")
        request: Any = self._document() if self.completion_mode else self._prompt_messages(settings)
        self.stats.set_generation({**self.last_stats, "tok_s": None, "ttft_s": None, "completion": 0})
        self.stats.set_speed_history([])
        self._generate(request, bubble, settings, self._gen, self.conversation_id, target)

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, request: Any, bubble: MessageBubble, settings: Settings, gen: int,
                  conv_id: int | None, target: dict[str, Any] | None) -> None:
        backend = self.session.backend
        n_ctx = self._view.n_ctx
        t0 = time.perf_counter()
        first: float | None = None
        n = 0
        pending = ""
        text = ""
        last_flush, last_n = 0.0, 0
        speeds: list[float] = []
        out = Reply()
        final = None
        try:
            params = settings.sampling_params(n_ctx)
            stream = (backend.stream_completion(request, params) if isinstance(request, str)
                      else backend.stream_chat(request, params))
            for ev in stream:
                now = time.perf_counter()
                if ev.text or ev.token_ids:
                    n = max(n + max(len(ev.token_ids), 1), ev.usage.completion_tokens)
                    pending += ev.text
                    if first is None:  # speed samples count tokens after the first
                        first, last_flush, last_n = now, now, n
                if ev.finish_reason is not None:
                    final = ev
                    break
                if pending and now - last_flush >= FLUSH_S:
                    text += pending
                    if now > last_flush and n > last_n:
                        speeds.append((n - last_n) / (now - last_flush))
                    prompt = ev.usage.prompt_tokens or None
                    live = {"tok_s": (n - 1) / (now - first) if first and n > 1 and now > first else None,
                            "ttft_s": (first - t0) if first else None, "completion": n,
                            "prompt": prompt, "ctx_used": prompt + n if prompt else None}
                    if not self._ui(self._on_delta, bubble, pending, live, list(speeds), gen):
                        backend.cancel()
                        return
                    pending = ""
                    last_flush, last_n = now, n
                    if settings.loop_guard and not out.looped and find_loop(text) is not None:
                        out.looped = True
                        backend.cancel()
        except Exception as e:  # noqa: BLE001 - shown in the chat
            out.error = f"{type(e).__name__}: {e}"
        t1 = time.perf_counter()
        out.summary = {"completion": n}
        if final is not None:
            tm, us = final.timings, final.usage
            out.summary = {
                "tok_s": tm.decode_tok_s or ((n - 1) / (t1 - first) if first and n > 1 else None),
                "ttft_s": tm.ttft_s or ((first - t0) if first else None),
                "prompt": us.prompt_tokens or None,
                "completion": us.completion_tokens or n,
            }
            out.reason = final.finish_reason or "stop"
            if final.finish_reason == "error":
                out.error = final.error or "generation failed"
        out.text = text + pending
        self._ui(self._on_finish, bubble, pending, out, gen, conv_id, target)

    def _ui(self, fn: Any, *args: Any) -> bool:
        """Run `fn` on the UI thread; False when the app is already gone (quit mid-reply)."""
        try:
            self.app.call_from_thread(fn, *args)
        except RuntimeError:
            return False
        return True

    async def _on_delta(self, bubble: MessageBubble, text: str, live: dict[str, Any], speeds: list[float],
                        gen: int) -> None:
        if gen != self._gen or not bubble.is_attached:
            return
        bubble.set_note("▍ streaming")
        await bubble.write(text)
        self.stats.set_generation({**self.last_stats, "n_ctx": self._view.n_ctx,
                                   **{k: v for k, v in live.items() if v is not None}})
        if not self.frozen_time:  # wall-clock samples would make snapshots differ run to run
            self.stats.set_speed_history(speeds)

    async def _on_finish(self, bubble: MessageBubble, tail: str, out: Reply, gen: int,
                         conv_id: int | None, target: dict[str, Any] | None) -> None:
        content = out.text
        old = list((target or {}).get("variants", []))
        variants = [*old, content] if content else old
        if gen == self._gen:
            self.streaming = False
        stale = gen != self._gen
        entry: dict[str, Any] | None = None
        if target is not None and variants:
            shown = len(variants) - 1 if content else target.get("shown", 0)
            entry = {**target, "content": variants[shown], "variants": variants, "shown": shown}
            if conv_id is not None and target.get("id") is not None:
                self.store.set_variants(target["id"], variants, entry["shown"])
        elif content:
            mid = self.store.add_message(conv_id, "assistant", content) if conv_id is not None else None
            entry = {"role": "assistant", "content": content, "id": mid, "variants": [content], "shown": 0}
        if stale:
            return
        if entry is not None:
            self.messages.append(entry)
        if bubble.is_attached:
            await bubble.write(tail)
            notes = {"abort": "stopped", "length": "max tokens reached", "error": "error"}
            note = LOOP_NOTE if out.looped else notes.get(out.reason, "")
            tok_s = out.summary.get("tok_s")
            if not note and tok_s:
                note = f"{out.summary.get('completion', 0)} tokens · {tok_s:.1f} tok/s"
            await bubble.finish()
            if entry is not None:
                if not content:  # regenerate stopped before its first token: show the old answer again
                    await bubble.show_text(entry["content"])
                bubble.set_counter(entry["shown"], len(entry["variants"]), note)
            elif out.reason == "abort":
                await bubble.update("*stopped before the first token*")
                bubble.set_counter(0, 1, note)
            else:
                await bubble.remove()
        if out.looped:
            self.notify("The reply kept repeating the same text, so it was stopped (loop guard; "
                        "turn it off or raise the repeat penalty in Settings, F4).", severity="warning",
                        timeout=10)
        if out.error:
            self.message_list.add("error", out.error)
        self.session.refresh_info()
        info = self._view.info
        self.last_stats = {**out.summary, "n_ctx": info.get("n_ctx"), "ctx_used": info.get("ctx_used")}
        self.stats.set_generation(self.last_stats)

    # ---- actions -------------------------------------------------------------------------------

    def action_stop(self) -> None:
        """Stop the streaming reply (or leave edit mode)."""
        if self.streaming:
            self.session.backend.cancel()
        elif self.waiting:
            self.waiting = False
            self.notify("Cancelled the queued message.")
        elif self.editing:
            self.editing = False
            self.prompt.clear()
            self._show_attachments()

    def _idle_or_warn(self) -> bool:
        if self.streaming or self.waiting:
            self.notify("A reply is still running: press Esc to stop it first.", severity="warning")
            return False
        if self._view.state != "ready":
            self.notify("No model is ready yet.", severity="warning")
            return False
        return True

    def action_regenerate(self) -> None:
        """A new answer to the last message; the earlier answers stay browsable (Alt+←/→)."""
        if not self._idle_or_warn():
            return
        if not self.messages:
            self.notify("Nothing to regenerate yet.", severity="warning")
            return
        if self.messages[-1]["role"] == "assistant" and self.message_list.last("assistant") is not None:
            self.start_reply(regenerate=True)
        else:  # the last answer failed or was never given: answer again
            self.start_reply()

    def action_browse(self, step: int) -> None:
        """Show the previous (-1) or next (+1) answer of the last turn."""
        if self.streaming or not self.messages or self.messages[-1]["role"] != "assistant":
            return
        last = self.messages[-1]
        variants = last.get("variants") or [last["content"]]
        shown = max(0, min(len(variants) - 1, last.get("shown", len(variants) - 1) + step))
        bubble = self.message_list.last("assistant")
        if bubble is None or len(variants) < 2:
            return
        last.update(content=variants[shown], shown=shown, variants=variants)
        bubble.show_text(variants[shown])
        bubble.set_counter(shown, len(variants))
        if self.conversation_id is not None and last.get("id") is not None:
            self.store.set_variants(last["id"], variants, shown)

    def action_edit_last(self) -> None:
        """Put the last user message in the editor; Enter replaces it (and its answers) and resends."""
        if self.streaming or self.waiting:
            self.notify("A reply is still running: press Esc to stop it first.", severity="warning")
            return
        last = self._last_user()
        if last is None:
            self.notify("No message to edit yet.", severity="warning")
            return
        self.editing = True
        self.prompt.set_text(last["content"])
        self.prompt.focus()
        self._show_attachments()

    def action_copy(self) -> None:
        """Copy a code block of the last answer, or the whole answer, to the clipboard."""
        from edgerun.tui.screens.dialogs import CopyDialog

        reply = next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), None)
        if not reply:
            self.notify("No answer to copy yet.", severity="warning")
            return
        blocks = code_blocks(reply)
        self.app.push_screen(CopyDialog(reply, blocks), lambda text: self.copy_text(text) if text else None)

    def copy_text(self, text: str) -> None:
        """Send `text` to the terminal's clipboard with OSC 52 and keep a copy in a file: a
        terminal that ignores OSC 52 cannot tell us so, so the message names the file too."""
        saved = data_dir() / "clipboard.txt"
        try:
            saved.write_text(text)
        except OSError:
            saved = None  # type: ignore[assignment]
        where = f"; also saved to {saved}" if saved else ""
        if len(text.encode()) > OSC52_MAX_BYTES:
            self.notify(f"Too long for the terminal clipboard ({len(text)} characters){where}.",
                        severity="warning", timeout=10, markup=False)
            return
        self.app.copy_to_clipboard(text)
        self.notify(f"Copied {len(text)} characters (OSC 52). If your terminal does not allow "
                    f"OSC 52 clipboard access, nothing was copied{where}.", timeout=6, markup=False)

    def action_toggle_panel(self) -> None:
        """Show or hide the side panel (more room for wide code)."""
        self.stats.toggle()

    def action_new_chat(self) -> None:
        """Start an empty conversation (a running reply is stopped and kept in history)."""
        if self.streaming:
            self.session.backend.cancel()
        self._gen += 1
        self.streaming = False
        self.waiting = False
        self.editing = False
        self.messages = []
        self.attachments = []
        self.overrides = {}
        self.conversation_id = None
        self._show_attachments()
        self.message_list.welcome(WELCOME)
        self.prompt.focus()

    def load_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation and continue it with its own settings."""
        self.action_new_chat()
        msgs = self.store.messages(conversation_id)
        self.conversation_id = conversation_id
        self.overrides = self.store.overrides(conversation_id)
        self.messages = []
        for m in msgs:
            if m["role"] not in ("user", "assistant"):
                continue
            if m["role"] == "assistant":
                m["shown"] = m["variants"].index(m["content"])
            self.messages.append(m)
        lst = self.message_list
        lst.remove_children()
        for m in self.messages:
            bubble = lst.add(m["role"], m["content"])
            if isinstance(bubble, MessageBubble) and m["role"] == "assistant":
                bubble.set_counter(m["shown"], len(m["variants"]))
        lst.anchor()

    def action_history(self) -> None:
        """Open the history screen."""
        from edgerun.tui.screens.history import HistoryScreen

        def done(cid: int | None) -> None:
            if cid is not None:
                self.load_conversation(cid)

        self.app.push_screen(HistoryScreen(self.store, frozen_time=0.0 if self.frozen_time else None), done)

    def action_settings(self) -> None:
        """Open the settings (for every chat, or for this chat only)."""
        from edgerun.tui.screens.settings import SettingsScreen

        def done(result: tuple[Settings, str] | None) -> None:
            if result is None:
                return
            new, scope = result
            if scope == "chat":
                self.overrides = new.overrides_from(self.session.settings)
                if self.conversation_id is not None:
                    self.store.set_overrides(self.conversation_id, self.overrides)
                self.notify("Settings saved for this chat")
            else:
                keep = {k: v for k, v in self.overrides.items() if k in CHAT_FIELDS}
                old_ctx = self.session.settings.n_ctx
                reloading = self.session.set_settings(new)
                self.overrides = {k: v for k, v in keep.items() if getattr(new, k) != v}
                if reloading:
                    self.notify(f"Settings saved; reloading the model with a {new.n_ctx}-token context",
                                markup=False)
                elif new.n_ctx != old_ctx:
                    self.notify("Settings saved. The context size applies to in-process models; "
                                "this server decides its own.", severity="warning", timeout=10)
                else:
                    self.notify("Settings saved")
            self._show_attachments()

        self.app.push_screen(SettingsScreen(self.settings, chat_only=bool(self.overrides)), done)

    def action_export(self) -> None:
        """Export the current conversation as Markdown."""
        from edgerun.tui.screens.dialogs import InputDialog

        if not self.messages:
            self.notify("Nothing to export yet.", severity="warning")
            return
        conv = self.store.get(self.conversation_id) if self.conversation_id else None
        title = conv.title if conv else "chat"
        default = str(Path.cwd() / f"{slugify(title)}.md")

        def done(path: str | None) -> None:
            if not path:
                return
            try:
                out = Path(path).expanduser()
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(conversation_markdown(title, self.messages, self._view.model_name))
            except OSError as e:
                self.notify(f"Export failed: {e}", severity="error", markup=False)
                return
            self.notify(f"Exported to {out}", markup=False)

        self.app.push_screen(InputDialog("Export as Markdown to", default), done)
