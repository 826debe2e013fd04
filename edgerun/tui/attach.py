"""Attaching a text file to a message: `/file PATH`, or a path dropped (pasted) into the input."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

MAX_FILE_BYTES = 4 << 20  # far beyond any context we run; reading more only to refuse it is waste

FENCE_LANGS = {
    ".py": "python", ".js": "javascript", ".ts": "typescript", ".rs": "rust", ".go": "go",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".cu": "cuda", ".java": "java",
    ".sh": "bash", ".md": "markdown", ".json": "json", ".toml": "toml", ".yaml": "yaml",
    ".yml": "yaml", ".sql": "sql", ".html": "html", ".css": "css", ".rb": "ruby",
}


class AttachError(ValueError):
    """The file cannot be attached; the message says why."""


@dataclass(frozen=True)
class Attachment:
    """A text file's contents, ready to go into a message."""

    path: Path
    text: str
    tokens: int = 0
    exact: bool = True  # False: the token count is an estimate (no tokenizer at hand)

    @property
    def name(self) -> str:
        return self.path.name

    def as_markdown(self) -> str:
        """The file as a fenced block under its name (the fence is longer than any run of
        backticks inside, so a Markdown file cannot close it early)."""
        longest = max((len(r) for r in self.text.split("\n") if set(r.strip()) == {"`"}), default=0)
        fence = "`" * max(3, longest + 1)
        lang = FENCE_LANGS.get(self.path.suffix.lower(), "")
        return f"File `{self.name}`:\n\n{fence}{lang}\n{self.text.rstrip(chr(10))}\n{fence}"


def dropped_path(text: str) -> Path | None:
    """The file a terminal "drop" pasted: one line holding a path (maybe quoted, maybe escaped
    with backslashes, maybe a file:// URL) that names an existing file. None otherwise."""
    line = text.strip()
    if not line or "\n" in line or len(line) > 4096:
        return None
    if line.startswith("file://"):
        line = unquote(urlparse(line).path)
    else:
        try:
            parts = shlex.split(line)
        except ValueError:
            return None
        if len(parts) != 1:
            return None
        line = parts[0]
    p = Path(line).expanduser()
    return p if p.is_absolute() and p.is_file() else None


def read_text_file(path: str | Path) -> Attachment:
    """Read a UTF-8 text file; refuse directories, missing files, huge and binary files."""
    p = Path(path).expanduser()
    if not p.exists():
        raise AttachError(f"no such file: {p}")
    if not p.is_file():
        raise AttachError(f"not a file: {p}")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AttachError(f"{p.name} is {size} bytes; files over {MAX_FILE_BYTES} bytes are refused")
    data = p.read_bytes()
    if b"\0" in data:
        raise AttachError(f"{p.name} is a binary file; only text files can be attached")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AttachError(f"{p.name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return Attachment(p, text)
