"""The conversation: one bubble per message, assistant replies streamed as Markdown."""

from __future__ import annotations

import re

from textual.await_complete import AwaitComplete
from textual.containers import VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System", "error": "Error"}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def verbatim_markdown(text: str) -> str:
    """Markdown that renders `text` exactly as typed: every line kept (hard breaks),
    indentation kept (non-breaking spaces), Markdown characters escaped. A pasted function
    without a fence would otherwise collapse into one paragraph."""
    out = []
    for line in text.replace("\t", "    ").split("\n"):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        # a blank line would end the paragraph (and drop the break): keep it as a non-breaking space
        out.append("\u00a0" * max(indent, 0 if body else 1) + _MD_SPECIAL.sub(r"\\\1", body))
    return "\\\n".join(out)


def display_markdown(role: str, content: str) -> str:
    """What a bubble renders: replies as Markdown; your own messages as typed, unless they
    hold a fenced block (then you wrote Markdown on purpose, as attachments do)."""
    if role == "user" and "```" not in content and "~~~" not in content:
        return verbatim_markdown(content)
    return content


class MessageBubble(Markdown):
    """A single message rendered as Markdown; assistant replies grow while they stream."""

    def __init__(self, role: str, content: str = "", title: str | None = None) -> None:
        super().__init__(display_markdown(role, content), classes=f"message {role}")
        self.role = role
        self.content = content
        self.border_title = title or ROLE_TITLES.get(role, role)
        self._stream: MarkdownStream | None = None

    async def write(self, fragment: str) -> None:
        """Append a fragment (from the UI thread) through a coalescing Markdown stream."""
        if not fragment:
            return
        self.content += fragment
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
        await self._stream.write(fragment)

    def restart(self) -> AwaitComplete:
        """Empty the bubble for a new answer to the same turn (regenerate)."""
        self.content = ""
        self._stream = None
        self.add_class("streaming")
        return self.update("")

    def show_text(self, text: str) -> AwaitComplete:
        """Replace the whole content (browsing between answers)."""
        self.content = text
        return self.update(display_markdown(self.role, text))

    def set_counter(self, shown: int, count: int, note: str = "") -> None:
        """Bottom border: "‹ 2/3 ›" when the turn has several answers, then an optional note."""
        parts = [f"‹ {shown + 1}/{count} ›"] if count > 1 else []
        if note:
            parts.append(note)
        self.border_subtitle = " · ".join(parts)

    async def finish(self, note: str | None = None) -> None:
        """End streaming; an optional note (e.g. "stopped") goes in the bottom border."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.border_subtitle = note or ""
        self.remove_class("streaming")


class MessageList(VerticalScroll):
    """The scrolling list of bubbles, anchored to the bottom until the user scrolls up."""

    def on_mount(self) -> None:
        self.anchor()

    def last(self, role: str) -> MessageBubble | None:
        """The last bubble of `role`, if any."""
        found = [b for b in self.query(MessageBubble) if b.role == role]
        return found[-1] if found else None

    def welcome(self, text: str) -> None:
        """Show the empty-chat hint."""
        self.remove_children()
        self.mount(Static(text, classes="welcome"))

    def add(self, role: str, content: str = "", title: str | None = None) -> MessageBubble:
        """Append a bubble and scroll to it."""
        for w in self.query(".welcome"):
            w.remove()
        bubble = MessageBubble(role, content, title)
        self.mount(bubble)
        self._anchor_released = False  # a new message brings the view back to the bottom
        self.anchor()
        return bubble
