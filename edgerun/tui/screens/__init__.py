"""Screens of the chat app."""

from __future__ import annotations

from textual.widget import Widget


def still_cursors(root: Widget) -> None:
    """Stop the text cursors under `root` blinking when the app runs with frozen stats (the
    snapshot tests): a blinking cursor makes a screenshot depend on when it was taken."""
    if getattr(root.app, "freeze_stats", False):
        for w in root.query("Input, TextArea"):
            w.cursor_blink = False  # type: ignore[attr-defined]
