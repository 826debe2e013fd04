"""`edgerun chat`: a Textual terminal chat that runs the engine in-process or talks to a server.

The window appears first; the model loads in a background worker. Heavy modules (numpy,
the runner, llama_cpp) are imported only inside workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen
from textual.signal import Signal

from edgerun.tui.backend import ChatBackend, InProcessBackend
from edgerun.tui.history import HistoryStore
from edgerun.tui.screens.chat import ChatScreen
from edgerun.tui.screens.models import ModelPickerScreen
from edgerun.tui.session import BackendFactory, ModelSession, SessionView
from edgerun.tui.settings import Settings, data_dir


class ChatCommands(Provider):
    """The app's own entries in the command palette (Ctrl+P)."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app: ChatApp = self.app  # type: ignore[assignment]
        chat = app.chat
        return [
            ("New chat", "Start an empty conversation (Ctrl+N)", chat.action_new_chat),
            ("History", "Resume, rename, delete or export past chats (F2)", chat.action_history),
            ("Models", "Pick, browse for, pull or switch the model (F3)", app.action_models),
            ("Settings", "System prompt, sampling, limits, stop strings (F4)", chat.action_settings),
            ("Regenerate", "A new answer to the last message (Ctrl+R)", chat.action_regenerate),
            ("Edit last message", "Edit and resend your last message (Ctrl+G)", chat.action_edit_last),
            ("Copy", "Copy a code block or the last answer (Ctrl+O)", chat.action_copy),
            ("Export chat", "Save the current conversation as a Markdown file", chat.action_export),
            ("Stop reply", "Stop the reply that is streaming (Esc)", chat.action_stop),
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


def _default_factory(spec: str, n_ctx: int) -> ChatBackend:
    return InProcessBackend(spec, ctx=n_ctx)


class ChatApp(App):
    """The chat application. It owns the model session (published to screens through
    `session.changed`) and the live machine readings (`system_readings`)."""

    CSS_PATH = "app.tcss"
    TITLE = "edgerun chat"
    COMMANDS = App.COMMANDS | {ChatCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, backend: ChatBackend, backend_factory: BackendFactory | None = None,
                 store: HistoryStore | None = None, settings: Settings | None = None,
                 freeze_stats: bool = False, model_label: str | None = None) -> None:
        """`backend_factory(spec, n_ctx)` makes the backend for a model picked later.
        `freeze_stats` turns off the live CPU/RAM/GPU readings and the cursor blink (for
        deterministic snapshots)."""
        super().__init__()
        self.store = store or HistoryStore()
        self.freeze_stats = freeze_stats
        self.session = ModelSession(self, backend, backend_factory or _default_factory,
                                    settings or Settings.load(), model_label)
        self.system_readings: Signal[dict[str, str]] = Signal(self, "system-readings")
        self._probe: Any = None

    def get_default_screen(self) -> Screen:
        return ChatScreen(self.session, self.store, frozen_time=self.freeze_stats)

    @property
    def chat(self) -> ChatScreen:
        """The main chat screen."""
        return self.screen_stack[0]  # type: ignore[return-value]

    # Read-only views of the session, for tests and the palette.
    @property
    def backend(self) -> ChatBackend:
        """The current backend."""
        return self.session.backend

    @property
    def settings(self) -> Settings:
        """The global settings."""
        return self.session.settings

    @property
    def ready(self) -> bool:
        """True once the current model has loaded."""
        return self.session.ready

    @property
    def load_error(self) -> str | None:
        """Why the current model failed to load, if it did."""
        return self.session.view.error

    @property
    def model_name(self) -> str:
        """The current model's name."""
        return self.session.view.model_name

    def on_mount(self) -> None:
        self.sub_title = self.model_name
        self.session.changed.subscribe(self, self._session_changed)
        if not self.freeze_stats:
            self._start_probe()
        self.session.load()

    def _session_changed(self, view: SessionView) -> None:
        self.sub_title = view.model_name

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
            self.system_readings.publish(self._probe.sample())

    # ---- actions ---------------------------------------------------------------------------------

    def action_models(self) -> None:
        """Open the model picker; the chosen model replaces the current one, keeping the chat."""
        def done(spec: str | None) -> None:
            if spec:
                name = Path(spec).stem if spec.endswith(".gguf") else spec
                self.notify(f"Switching to {name}", markup=False)
                self.session.switch(spec)

        self.push_screen(ModelPickerScreen(current=self.model_name), done)

    def on_unmount(self) -> None:
        self.session.close()


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

    threads = args.threads
    settings = Settings.load()
    # --ctx on the command line wins for this run; the settings screen's value otherwise
    if args.ctx:
        settings = replace(settings, n_ctx=int(args.ctx))
    if args.url:
        backend: ChatBackend = HttpBackend(args.url, api_key=args.api_key, model=args.model)
    else:
        from edgerun.catalog import DEFAULT_MODEL

        backend = InProcessBackend(args.model or DEFAULT_MODEL, threads=threads, ctx=settings.n_ctx,
                                   placement=args, deterministic=args.deterministic)
    app = ChatApp(backend, settings=settings,
                  backend_factory=lambda spec, n_ctx: InProcessBackend(spec, threads=threads, ctx=n_ctx,
                                                                       placement=args,
                                                                       deterministic=args.deterministic))
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
