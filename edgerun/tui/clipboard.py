"""Copying to the terminal's clipboard with OSC 52, and finding the code blocks of a reply."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

# tmux and most terminals cap an OSC 52 payload; beyond this many bytes of text it is dropped.
OSC52_MAX_BYTES = 100_000

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)"
                    r"(?:^ {0,3}(?P=fence)[`~]*[ \t]*$|\Z)", re.S | re.M)


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a Markdown reply."""

    lang: str
    code: str

    @property
    def label(self) -> str:
        n = self.code.count("\n") + 1
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        return f"{self.lang or 'code'} · {n} line{'s' if n != 1 else ''} · {first[:40]}"


def code_blocks(markdown: str) -> list[CodeBlock]:
    """Fenced code blocks in order (an unclosed last fence runs to the end, as it renders)."""
    out = []
    for m in _FENCE.finditer(markdown):
        body = m.group("body")
        lang = m.group("info").strip().split(" ")[0]
        out.append(CodeBlock(lang, body[:-1] if body.endswith("\n") else body))
    return out


def osc52(text: str, target: str = "c") -> str:
    """The escape sequence that asks the terminal to put `text` on the clipboard."""
    payload = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f"\x1b]52;{target};{payload}\a"
