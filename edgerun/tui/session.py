"""The model session: which backend is current, whether it is loading, ready or failed, and
what it reported about itself. No widgets here.

The app owns one `ModelSession` and screens subscribe to its `changed` signal; they never
write the session's fields (they call its methods) and the session never touches a widget.
Loading runs in a thread worker; every state change is published on the UI thread.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from textual.signal import Signal

from edgerun.tui.settings import Settings

if TYPE_CHECKING:
    from textual.app import App

    from edgerun.tui.backend import ChatBackend

State = Literal["loading", "ready", "failed"]
Mode = Literal["chat", "completion"]

BackendFactory = Callable[[str, int], "ChatBackend"]
"""`factory(model_spec, n_ctx)` -> a backend that is not loaded yet."""


@dataclass(frozen=True)
class Progress:
    """Where a load stands: `stage` is "resolve", "download", "load" or "ready"."""

    done: int = 0
    total: int = 0
    stage: str = "resolve"


@dataclass(frozen=True)
class SessionView:
    """What subscribers receive: a snapshot, so a screen cannot change the session by accident."""

    model_name: str
    state: State
    error: str | None = None
    error_detail: str = ""  # the traceback, for the error dialog
    info: dict[str, Any] = field(default_factory=dict)
    progress: Progress = Progress()
    settings: Settings = field(default_factory=Settings)

    @property
    def mode(self) -> Mode:
        """"completion" for a base model (no chat template), else "chat"."""
        return "completion" if self.info.get("chat_template") is False else "chat"

    @property
    def n_ctx(self) -> int:
        """The model's context size in tokens (0 when not known yet)."""
        return int(self.info.get("n_ctx") or 0)


def backend_name(backend: Any, fallback: str = "model") -> str:
    """A label for a backend before it has loaded (its spec, or its remote model id)."""
    return str(getattr(backend, "model_spec", None) or getattr(backend, "model", None) or fallback)


class ModelSession:
    """The current backend and its state; published through `changed` (a Textual Signal).

    `app` is used only to run the load worker and to hop back to the UI thread.
    """

    PROGRESS_EVERY_S = 0.1  # a pull reports every chunk; the panel needs ~10 updates a second

    def __init__(self, app: App, backend: ChatBackend, factory: BackendFactory,
                 settings: Settings, model_label: str | None = None) -> None:
        self._app = app
        self.factory = factory
        self.changed: Signal[SessionView] = Signal(app, "session-changed")
        self.backend = backend
        self._view = SessionView(model_name=model_label or backend_name(backend), state="loading",
                                 settings=settings)
        self._last_progress = 0.0
        self._last_stage = ""

    # ---- reading -------------------------------------------------------------------------------

    @property
    def view(self) -> SessionView:
        """The current snapshot."""
        return self._view

    @property
    def ready(self) -> bool:
        """True when the backend is loaded and can stream."""
        return self._view.state == "ready"

    @property
    def settings(self) -> Settings:
        """The global chat settings (per-chat overrides are applied by the chat screen)."""
        return self._view.settings

    def info(self) -> dict[str, Any]:
        """backend.info(), or an empty dict if it fails (a remote server may have gone away)."""
        try:
            return dict(self.backend.info())
        except Exception:  # noqa: BLE001 - the panel shows "–" instead
            return {}

    def count_tokens(self, text: str) -> tuple[int, bool]:
        """Tokens in `text` with the current model: (count, exact). Backends without a
        tokenizer (a remote server) give an estimate of 4 characters a token, marked inexact."""
        fn = getattr(self.backend, "count_tokens", None)
        if callable(fn) and self.ready:
            try:
                return int(fn(text)), True
            except Exception:  # noqa: BLE001 - fall through to the estimate, marked as such
                pass
        return (len(text) + 3) // 4, False

    # ---- changing ------------------------------------------------------------------------------

    def _publish(self, **changes: Any) -> None:
        self._view = replace(self._view, **changes)
        self.changed.publish(self._view)

    def refresh_info(self) -> None:
        """Re-read backend.info() (context use changes after every reply) and publish it."""
        if self.ready:
            self._publish(info=self.info())

    @property
    def sizes_context(self) -> bool:
        """True when this process picks the context size (an in-process model); a server
        decides its own."""
        return bool(getattr(self.backend, "local_context", False))

    def set_settings(self, settings: Settings) -> bool:
        """Replace the global settings; a new context size reloads an in-process model.
        Returns True when the model is being reloaded."""
        old = self._view.settings
        self._publish(settings=settings)
        if settings.n_ctx != old.n_ctx and self.sizes_context and self._view.state != "loading":
            self.switch(self.spec or self._view.model_name)
            return True
        return False

    @property
    def spec(self) -> str | None:
        """What the current backend was made from (a catalog name or a path), if known."""
        spec = getattr(self.backend, "model_spec", None)
        return str(spec) if spec else None

    def load(self, backend: ChatBackend | None = None) -> None:
        """Make `backend` (default: the current one) current and load it in a worker thread."""
        self.backend = backend or self.backend
        self._publish(model_name=backend_name(self.backend, self._view.model_name), state="loading",
                      error=None, error_detail="", info={}, progress=Progress())
        self._app.run_worker(lambda b=self.backend: self._load_in_thread(b), thread=True,
                             exclusive=True, group="load", name="model-load")

    def switch(self, spec: str) -> None:
        """Close the current backend and load one for `spec` with the current context size."""
        self.close()
        self.load(self.factory(spec, self._view.settings.n_ctx))

    def close(self) -> None:
        """Stop any stream and release the backend's engine."""
        self.backend.cancel()
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    # ---- the worker (runs in a thread) ---------------------------------------------------------

    def _load_in_thread(self, backend: ChatBackend) -> None:
        try:
            backend.load(lambda d, t, s: self._progress_from_thread(backend, d, t, s))
        except Exception as e:  # noqa: BLE001 - the whole message goes to an error dialog
            self._to_ui(self._failed, backend, str(e) or type(e).__name__, traceback.format_exc())
            return
        self._to_ui(self._loaded, backend)

    def _to_ui(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._app.call_from_thread(fn, *args)
        except RuntimeError:  # the app quit while the model was loading
            pass

    def _progress_from_thread(self, backend: ChatBackend, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        # throttled, but a new stage (resolve -> download -> load) always shows
        if (stage != "ready" and stage == self._last_stage
                and now - self._last_progress < self.PROGRESS_EVERY_S and done < total):
            return
        self._last_progress, self._last_stage = now, stage
        if stage != "ready":
            self._to_ui(self._progress, backend, Progress(done, total, stage))

    def _progress(self, backend: ChatBackend, progress: Progress) -> None:
        if backend is self.backend and self._view.state == "loading":
            self._publish(progress=progress)

    def _loaded(self, backend: ChatBackend) -> None:
        if backend is not self.backend:  # a newer load replaced it
            return
        info = self.info()
        self._publish(state="ready", info=info, progress=Progress(1, 1, "ready"),
                      model_name=str(info.get("model") or self._view.model_name))
        remember = getattr(backend, "model_path", None)
        if callable(remember) and remember():
            from edgerun.tui.settings import remember_model

            remember_model(str(remember()))

    def _failed(self, backend: ChatBackend, error: str, detail: str) -> None:
        if backend is self.backend:
            self._publish(state="failed", error=error, error_detail=detail, progress=Progress(0, 0, "error"))
