"""The conversation: one bubble per message, assistant replies streamed as Markdown."""

from __future__ import annotations

from typing import TypeVar

from rich.text import Text
from textual.await_complete import AwaitComplete
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from edgerun.tui.attach import Attachment

BubbleT = TypeVar("BubbleT", bound=Widget)
ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System", "error": "Error"}


def is_plain(role: str, content: str) -> bool:
    """Your own messages show as typed (every line and indent kept) unless they hold a fenced
    block: then they were written as Markdown on purpose, as attachments are."""
    return role == "user" and "```" not in content and "~~~" not in content


class PlainBubble(Static):
    """A message shown verbatim: a pasted function without a fence would otherwise collapse
    into one Markdown paragraph."""

    def __init__(self, role: str, content: str, title: str | None = None) -> None:
        super().__init__(Text(content), classes=f"message {role} plain")
        self.role = role
        self.content = content
        self.border_title = title or ROLE_TITLES.get(role, role)


class MessageBubble(Markdown):
    """A single message rendered as Markdown; assistant replies grow while they stream."""

    def __init__(self, role: str, content: str = "", title: str | None = None) -> None:
        super().__init__(content, classes=f"message {role}")
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
        return self.update(text)

    def set_note(self, note: str) -> None:
        """The bottom border's text while the answer streams ("thinking…", "streaming")."""
        self.border_subtitle = note

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

    def add(self, role: str, content: str = "", title: str | None = None) -> MessageBubble | PlainBubble:
        """Append a bubble and scroll to it (your own plain messages get a verbatim one)."""
        if is_plain(role, content):
            return self._append(PlainBubble(role, content, title))
        return self._append(MessageBubble(role, content, title))

    def add_reply(self, title: str) -> MessageBubble:
        """Append an empty answer bubble to stream into."""
        return self._append(MessageBubble("assistant", "", title))

    def _append(self, bubble: BubbleT) -> BubbleT:
        for w in self.query(".welcome"):
            w.remove()
        self.mount(bubble)
        self._anchor_released = False  # a new message brings the view back to the bottom
        self.anchor()
        return bubble


class AttachmentBar(Static):
    """Above the editor: the files waiting to go with the next message, with their token
    counts, and whether Enter will replace the last message (edit mode). Hidden when empty."""

    def show(self, attachments: list[Attachment], n_ctx: int, editing: bool = False) -> None:
        """List `attachments` against a context of `n_ctx` tokens; flag edit mode."""
        lines = []
        if editing:
            lines.append("✎ Editing your last message: Enter replaces it and its answers, Esc cancels")
        parts = [f"📎 {a.name} · {'' if a.exact else '~'}{a.tokens} tokens" for a in attachments]
        if parts:
            total = sum(a.tokens for a in attachments)
            lines.append("   ".join(parts) + f"   ({total} of {n_ctx} context tokens · /detach removes)")
        self.display = bool(lines)
        self.update(Text("\n".join(lines)))
