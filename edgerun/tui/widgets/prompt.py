"""The message editor: multi-line, Enter sends, Ctrl+J (or Shift/Alt+Enter) starts a new line.

A bracketed paste arrives as one Paste event and is inserted whole, newlines included, so a
pasted code block is never sent line by line. The widget talks to its screen only through
its messages: `Submitted`, `RecallLast` (Up in an empty editor) and `FileDropped` (a paste
that is just the path of an existing file, which is what terminals send on drag and drop).
"""

from __future__ import annotations

from pathlib import Path

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from edgerun.tui.attach import dropped_path

NEWLINE_KEYS = ("ctrl+j", "shift+enter", "alt+enter")
NEWLINE_HELP = "Ctrl+J"


class PromptInput(TextArea):
    """A TextArea that sends on Enter.

    Enter and the new-line keys are handled in `_on_key`, not as bindings: a binding runs
    when the key event has bubbled up to the app, after the keys typed behind it were
    inserted, so "abc Ctrl+J def" typed quickly would come out as "abcdef\n".
    """

    class Submitted(Message):
        """Enter was pressed: `text` is the editor's content (not yet cleared)."""

        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

    class RecallLast(Message):
        """Up was pressed in an empty editor: the screen may fill in the last message."""

    class FileDropped(Message):
        """A path to an existing file was pasted on its own (a drag and drop)."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    def __init__(self, placeholder: str = "", id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__("", id=id, soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                         placeholder=placeholder, compact=True)

    async def _on_key(self, event: events.Key) -> None:
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        if event.key == "up" and not self.text:
            event.stop()
            event.prevent_default()
            self.post_message(self.RecallLast())
        # Anything else: Textual calls TextArea._on_key next (handlers run along the MRO).

    async def _on_paste(self, event: events.Paste) -> None:
        path = dropped_path(event.text) if not self.text.strip() else None
        if path is not None:
            event.stop()
            event.prevent_default()
            self.post_message(self.FileDropped(path))
        # Otherwise TextArea._on_paste inserts the text (handlers run along the MRO).

    def set_text(self, text: str) -> None:
        """Replace the content and put the cursor at its end."""
        self.load_text(text)
        self.move_cursor(self.document.end)
