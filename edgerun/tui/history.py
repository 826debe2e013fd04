"""Chat history in SQLite under the user data dir.

An assistant turn is one row: `content` is the answer shown, `variants` (JSON, NULL for a
turn never regenerated) every answer generated for it, oldest first. A conversation's
per-chat setting overrides live in `conversations.settings` (JSON). Databases written before
these columns existed are upgraded in place on open.
"""

from __future__ import annotations

import json
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

# (table, column, declaration) added after the first release; ALTER TABLE adds them to old files.
_UPGRADES = [
    ("conversations", "settings", "TEXT"),
    ("messages", "variants", "TEXT"),
]


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
        for table, column, decl in _UPGRADES:
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
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

    def add_message(self, conversation_id: int, role: str, content: str) -> int:
        """Append a message and touch the conversation; return the message's id."""
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO messages (conversation_id, role, content, created) VALUES (?, ?, ?, ?)",
            (conversation_id, role, content, now),
        )
        self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        self.db.commit()
        return int(cur.lastrowid)

    def set_variants(self, message_id: int, variants: list[str], shown: int) -> None:
        """Store every answer of an assistant turn and which one is shown (`variants[shown]`)."""
        self.db.execute("UPDATE messages SET content = ?, variants = ? WHERE id = ?",
                        (variants[shown], json.dumps(variants), message_id))
        self.db.commit()

    def delete_from(self, conversation_id: int, message_id: int) -> None:
        """Delete a message and every later one of its conversation (edit and resend)."""
        self.db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                        (conversation_id, message_id))
        self.db.commit()

    def set_overrides(self, conversation_id: int, overrides: dict) -> None:
        """Save a chat's own settings (the fields that differ from the global ones)."""
        self.db.execute("UPDATE conversations SET settings = ? WHERE id = ?",
                        (json.dumps(overrides) if overrides else None, conversation_id))
        self.db.commit()

    def overrides(self, conversation_id: int) -> dict:
        """A chat's own settings ({} when it has none or the stored value is unreadable)."""
        row = self.db.execute("SELECT settings FROM conversations WHERE id = ?",
                              (conversation_id,)).fetchone()
        try:
            out = json.loads(row[0]) if row and row[0] else {}
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}

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

    def messages(self, conversation_id: int) -> list[dict]:
        """The messages of a conversation as chat dicts: "role", "content", "id", and for
        assistant turns "variants" (every answer, at least the shown one)."""
        rows = self.db.execute(
            "SELECT id, role, content, variants FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        ).fetchall()
        out: list[dict] = []
        for mid, role, content, variants in rows:
            m: dict = {"role": role, "content": content, "id": mid}
            if role == "assistant":
                try:
                    vs = json.loads(variants) if variants else [content]
                except ValueError:
                    vs = [content]
                m["variants"] = vs if content in vs else [*vs, content]
            out.append(m)
        return out

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
