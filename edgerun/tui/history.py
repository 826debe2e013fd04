"""Chat history in SQLite under the user data dir."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edgerun.tui.settings import data_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


@dataclass(frozen=True)
class Conversation:
    """One row of the history list."""

    id: int
    title: str
    model: str
    created: float
    updated: float
    n_messages: int


def make_title(text: str, width: int = 48) -> str:
    """A one-line title from the first user message."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def slugify(text: str) -> str:
    """A file-name-safe version of a title."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s[:60] or "chat"


class HistoryStore:
    """Conversations and their messages; one connection, used from the UI thread."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or data_dir() / "history.sqlite3"
        self.db = sqlite3.connect(str(self.path), check_same_thread=False)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(_SCHEMA)
        self.db.commit()

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def create(self, title: str, model: str = "") -> int:
        """Start a conversation; return its id."""
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO conversations (title, model, created, updated) VALUES (?, ?, ?, ?)",
            (title, model, now, now),
        )
        self.db.commit()
        return int(cur.lastrowid)

    def add_message(self, conversation_id: int, role: str, content: str) -> None:
        """Append a message and touch the conversation."""
        now = time.time()
        self.db.execute(
            "INSERT INTO messages (conversation_id, role, content, created) VALUES (?, ?, ?, ?)",
            (conversation_id, role, content, now),
        )
        self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        self.db.commit()

    def list(self) -> list[Conversation]:
        """All conversations, most recently updated first."""
        rows = self.db.execute(
            "SELECT c.id, c.title, c.model, c.created, c.updated, COUNT(m.id) FROM conversations c "
            "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id "
            "ORDER BY c.updated DESC, c.id DESC"
        ).fetchall()
        return [Conversation(*r) for r in rows]

    def get(self, conversation_id: int) -> Conversation | None:
        """One conversation, or None."""
        return next((c for c in self.list() if c.id == conversation_id), None)

    def messages(self, conversation_id: int) -> list[dict[str, str]]:
        """The messages of a conversation as chat dicts ({"role", "content"})."""
        rows = self.db.execute(
            "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        ).fetchall()
        return [{"role": r, "content": c} for r, c in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        """Give a conversation a new title."""
        self.db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
        self.db.commit()

    def delete(self, conversation_id: int) -> None:
        """Delete a conversation and its messages."""
        self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        self.db.commit()

    def to_markdown(self, conversation_id: int) -> str:
        """A conversation as a Markdown document."""
        conv = self.get(conversation_id)
        if conv is None:
            raise KeyError(conversation_id)
        return conversation_markdown(conv.title, self.messages(conversation_id), conv.model)

    def export(self, conversation_id: int, path: Path) -> Path:
        """Write a conversation as Markdown to `path`; return the path."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_markdown(conversation_id))
        return path


def conversation_markdown(title: str, messages: list[dict[str, str]], model: str = "") -> str:
    """Render chat messages as a Markdown document."""
    out = [f"# {title}", ""]
    if model:
        out += [f"*Model: {model}*", ""]
    names = {"user": "You", "assistant": "Assistant", "system": "System"}
    for m in messages:
        out += [f"## {names.get(m['role'], m['role'].title())}", "", m["content"].rstrip(), ""]
    return "\n".join(out)
