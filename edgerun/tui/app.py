"""`edgerun chat`: a Textual terminal chat that runs the engine in-process or talks to a server.

The window appears first; the model loads in a background worker. Heavy modules (numpy,
the runner, llama_cpp) are imported only inside workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen

from edgerun.tui.backend import ChatBackend, InProcessBackend
from edgerun.tui.history import HistoryStore, conversation_markdown, slugify
from edgerun.tui.screens import still_cursors
from edgerun.tui.screens.chat import ChatScreen
from edgerun.tui.screens.dialogs import InputDialog
from edgerun.tui.screens.history import HistoryScreen
from edgerun.tui.screens.models import ModelPickerScreen
from edgerun.tui.screens.settings import SettingsScreen
from edgerun.tui.settings import Settings, data_dir

BackendFactory = Callable[[str], ChatBackend]


class ChatCommands(Provider):
    """The app's own entries in the command palette (Ctrl+P)."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app: ChatApp = self.app  # type: ignore[assignment]
        return [
            ("New chat", "Start an empty conversation (Ctrl+N)", app.action_new_chat),
            ("History", "Resume, rename, delete or export past chats (F2)", app.action_history),
            ("Models", "Pick, pull or switch the model (F3)", app.action_models),
            ("Settings", "System prompt, temperature, top-p, max tokens (F4)", app.action_settings),
            ("Export chat", "Save the current conversation as a Markdown file", app.action_export),
            ("Stop reply", "Stop the reply that is streaming (Esc)", app.action_stop),
        ]

    async def discover(self) -> Hits:
        for name, help_text, cb in self._commands():
            yield DiscoveryHit(name, cb, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, cb in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), cb, help=help_text)


class ChatApp(App):
    """The chat application. `backend` may be swapped at run time (model picker)."""

    CSS_PATH = "app.tcss"
    TITLE = "edgerun chat"
    COMMANDS = App.COMMANDS | {ChatCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, backend: ChatBackend, backend_factory: BackendFactory | None = None,
                 store: HistoryStore | None = None, settings: Settings | None = None,
                 freeze_stats: bool = False, model_label: str | None = None) -> None:
        """`freeze_stats` turns off the live CPU/RAM/GPU readings and the cursor blink
        (for deterministic snapshots)."""
        super().__init__()
        self.backend = backend
        self.backend_factory = backend_factory or (lambda spec: InProcessBackend(spec))
        self.store = store or HistoryStore()
        self.settings = settings or Settings.load()
        self.freeze_stats = freeze_stats
        self.model_name = model_label or str(getattr(backend, "model_spec", None)
                                             or getattr(backend, "model", None) or "model")
        self.ready = False
        self.load_error: str | None = None
        self._probe: Any = None
        self._last_progress = 0.0

    def get_default_screen(self) -> Screen:
        return ChatScreen()

    @property
    def chat(self) -> ChatScreen:
        """The main chat screen."""
        return self.screen_stack[0]  # type: ignore[return-value]

    def on_mount(self) -> None:
        self.sub_title = self.model_name

    def chat_mounted(self) -> None:
        """Called once the main screen exists: start the probes and the model load."""
        if self.freeze_stats:
            still_cursors(self.chat)
        else:
            self._start_probe()
        self.load_model(self.backend)

    # ---- model loading ---------------------------------------------------------------------------

    def load_model(self, backend: ChatBackend) -> None:
        """Make `backend` current and load it in the background."""
        self.backend = backend
        self.ready = False
        self.load_error = None
        self.model_name = str(getattr(backend, "model_spec", None) or getattr(backend, "model", None)
                              or self.model_name)
        self.sub_title = self.model_name
        stats = self.chat.stats
        stats.set_model(self.model_name)
        stats.set_progress(0, 0, "resolve")
        stats.set_placement({})
        self._load_worker(backend)

    @work(thread=True, exclusive=True, group="load")
    def _load_worker(self, backend: ChatBackend) -> None:
        try:
            backend.load(partial(self._progress_from_thread, backend))
        except Exception as e:  # noqa: BLE001 - shown in the UI
            self.call_from_thread(self._load_failed, backend, f"{e}")
            return
        self.call_from_thread(self._loaded, backend)

    def _progress_from_thread(self, backend: ChatBackend, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        if stage != "ready" and now - self._last_progress < 0.1 and done < total:
            return
        self._last_progress = now
        self.call_from_thread(self._show_progress, backend, done, total, stage)

    def _show_progress(self, backend: ChatBackend, done: int, total: int, stage: str) -> None:
        if backend is self.backend and stage != "ready":
            self.chat.stats.set_progress(done, total, stage)

    def _loaded(self, backend: ChatBackend) -> None:
        if backend is not self.backend:
            return
        self.ready = True
        info = self.safe_info()
        self.model_name = str(info.get("model") or self.model_name)
        self.sub_title = self.model_name
        stats = self.chat.stats
        stats.set_model(self.model_name, str(info.get("backend", "")))
        stats.set_progress(1, 1, "ready")
        remote = str(info.get("backend", "")).startswith("http")
        stats.set_placement(info.get("placement") or {}, remote=remote)
        stats.set_generation({"n_ctx": info.get("n_ctx"), "ctx_used": info.get("ctx_used")})
        self.chat.last_stats = {"n_ctx": info.get("n_ctx"), "ctx_used": info.get("ctx_used")}
        self.chat.model_ready()

    def _load_failed(self, backend: ChatBackend, error: str) -> None:
        if backend is not self.backend:
            return
        self.load_error = error
        self.chat.stats.set_progress(0, 0, "error")
        self.notify(f"Could not load the model: {error}", severity="error", timeout=15)
        if self.chat.waiting:
            self.chat.waiting = False
            self.chat.message_list.add("error", f"No model is loaded: {error}")

    def safe_info(self) -> dict[str, Any]:
        """backend.info(), or an empty dict if it fails."""
        try:
            return dict(self.backend.info())
        except Exception:  # noqa: BLE001
            return {}

    def switch_model(self, spec: str) -> None:
        """Replace the backend with one for `spec`, keeping the conversation."""
        chat = self.chat
        if chat.streaming:
            self.backend.cancel()
        old = self.backend
        close = getattr(old, "close", None)
        if callable(close):
            close()
        self.notify(f"Switching to {Path(spec).stem if spec.endswith('.gguf') else spec}")
        self.load_model(self.backend_factory(spec))

    # ---- live system readings --------------------------------------------------------------------

    @work(thread=True, group="probe")
    def _start_probe(self) -> None:
        from edgerun.tui.widgets.stats import SystemProbe

        probe = SystemProbe()
        self.call_from_thread(self._probe_ready, probe)

    def _probe_ready(self, probe: Any) -> None:
        self._probe = probe
        self._sample()
        self.set_interval(1.0, self._sample)

    def _sample(self) -> None:
        if self._probe is not None:
            self.chat.stats.set_system(self._probe.sample())

    # ---- actions ---------------------------------------------------------------------------------

    def action_new_chat(self) -> None:
        """Start a new conversation."""
        self.chat.action_new_chat()

    def action_stop(self) -> None:
        """Stop the reply."""
        self.chat.action_stop()

    def action_history(self) -> None:
        """Open the history screen."""
        def done(cid: int | None) -> None:
            if cid is not None:
                self.chat.load_conversation(cid)

        self.push_screen(HistoryScreen(self.store, frozen_time=0.0 if self.freeze_stats else None), done)

    def action_models(self) -> None:
        """Open the model picker."""
        def done(spec: str | None) -> None:
            if spec:
                self.switch_model(spec)

        self.push_screen(ModelPickerScreen(current=self.model_name), done)

    def action_settings(self) -> None:
        """Open the settings screen."""
        def done(new: Settings | None) -> None:
            if new is not None:
                self.settings = new
                self.notify("Settings saved")

        self.push_screen(SettingsScreen(self.settings), done)

    def action_export(self) -> None:
        """Export the current conversation as Markdown."""
        chat = self.chat
        if not chat.messages:
            self.notify("Nothing to export yet.", severity="warning")
            return
        conv = self.store.get(chat.conversation_id) if chat.conversation_id else None
        title = conv.title if conv else "chat"
        default = str(Path.cwd() / f"{slugify(title)}.md")

        def done(path: str | None) -> None:
            if not path:
                return
            try:
                out = Path(path).expanduser()
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(conversation_markdown(title, chat.messages, self.model_name))
            except OSError as e:
                self.notify(f"Export failed: {e}", severity="error")
                return
            self.notify(f"Exported to {out}")

        self.push_screen(InputDialog("Export as Markdown to", default), done)

    def on_unmount(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


@contextlib.contextmanager
def native_stderr_to(log_path: Path) -> Iterator[None]:
    """Send fd 2 (where C libraries such as llama.cpp print) to a log file while the UI
    draws on a duplicate of the terminal, so native chatter cannot corrupt the screen."""
    if not (sys.__stderr__ and sys.__stderr__.isatty()):
        yield
        return
    saved_fd = os.dup(2)
    term = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    orig = sys.__stderr__
    try:
        with open(log_path, "a") as log:
            os.dup2(log.fileno(), 2)
            sys.__stderr__ = term
            try:
                yield
            finally:
                sys.__stderr__ = orig
                os.dup2(saved_fd, 2)
    finally:
        os.close(saved_fd)
        term.close()


def run(args: argparse.Namespace) -> int:
    """Run the chat app for parsed `edgerun chat` arguments; return the exit code."""
    from edgerun.tui.backend import HttpBackend

    threads, ctx = args.threads, args.ctx
    if args.url:
        backend: ChatBackend = HttpBackend(args.url, api_key=args.api_key, model=args.model)
    else:
        from edgerun.catalog import DEFAULT_MODEL

        backend = InProcessBackend(args.model or DEFAULT_MODEL, threads=threads, ctx=ctx, placement=args)
    app = ChatApp(backend, backend_factory=lambda spec: InProcessBackend(spec, threads=threads, ctx=ctx,
                                                                         placement=args))
    with native_stderr_to(data_dir() / "chat.log"):
        app.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m edgerun.tui.app [-m MODEL] [--url URL] ...`."""
    from edgerun.cli.chat import add_arguments

    parser = argparse.ArgumentParser(prog="edgerun chat", description="Chat with a model in the terminal.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
