"""Pre-tokenizers of byte-level BPE vocabularies, split the way llama.cpp splits.

A BPE vocabulary names its pre-tokenizer in `tokenizer.ggml.pre`. Each name maps to
a list of regexes applied in turn, each splitting the pieces the previous one left.
To give llama.cpp's ids we follow its two ways of running them:

- the GPT-2 and Llama-3 patterns run as hand-written scanners over codepoint flags
  (letter, number, whitespace) rather than as regexes;
- every other pattern runs on a "collapsed" copy of the text where each non-ASCII
  codepoint is replaced by one stand-in character for its Unicode category
  (letters, numbers, punctuation, marks, symbols, whitespace, other) and each
  `\\p{..}` class by that stand-in plus its ASCII members. ASCII stays as it is,
  `\\s` means the C locale's six ASCII spaces (re.ASCII), non-ASCII whitespace is
  collapsed to a vertical tab so that it still counts as `\\s`.

Codepoint categories come from Python's `unicodedata`; whitespace is Unicode's
White_Space property (not `str.isspace`, which also counts U+001C..U+001F).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# Unicode's White_Space property: the set llama.cpp treats as whitespace.
WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                        0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

_LETTER, _NUMBER, _SPACE, _OTHER = 1, 2, 4, 8
_flag_cache: dict[str, int] = {}


def _flag(ch: str) -> int:
    f = _flag_cache.get(ch)
    if f is None:
        if ord(ch) in WHITESPACE:
            f = _SPACE  # no whitespace codepoint is a letter or a number
        else:
            c = unicodedata.category(ch)[0]
            f = _LETTER if c == "L" else _NUMBER if c == "N" else _OTHER
        _flag_cache[ch] = f
    return f


def _collapse_char(ch: str) -> str:
    if ord(ch) < 128:
        return ch
    if ord(ch) in WHITESPACE:
        return "\x0b"
    cat = unicodedata.category(ch)
    return _COLLAPSE_CAT.get(cat[0], "\xd0")


_COLLAPSE_CAT = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
# \p{X} -> the stand-in plus the ASCII members of X (as a bracket-expression body)
_UCAT = {
    "N": "\xd1" + "0-9",
    "L": "\xd2" + "A-Za-z",
    "P": "\xd3" + "!-#%-*,-/:;?@\\[-\\]_\\{\\}",
    "M": "\xd4",
    "S": "\xd5" + "\\$\\+<->\\^`\\|",
}
_UCAT_ALIASES = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S",
                 "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L"}


class _Collapser(dict):
    """str.translate table that fills itself: char -> its collapsed stand-in."""

    def __missing__(self, cp: int) -> str:
        v = _collapse_char(chr(cp))
        self[cp] = v
        return v


class _SpaceOnly(dict):
    """str.translate table for patterns without \\p{..}: only non-ASCII whitespace changes."""

    def __missing__(self, cp: int) -> str:
        v = "\x0b" if cp > 0x7F and cp in WHITESPACE else chr(cp)
        self[cp] = v
        return v


_COLLAPSE_TABLE = _Collapser()
_SPACE_TABLE = _SpaceOnly()


def _translate_pattern(pattern: str) -> tuple[str, bool]:
    """llama.cpp's regex -> (Python pattern over the collapsed text, whether it needs collapsing)."""
    uses_cat = re.search(r"\\p\{(N|L|P|M|S|Lu|Ll|Lt|Lm|Lo)\}", pattern) is not None
    if not uses_cat:
        return pattern, False
    out: list[str] = []
    inside = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[" and (i == 0 or pattern[i - 1] != "\\"):
            inside = True
            out.append(c)
        elif inside and c == "]" and pattern[i - 1] != "\\":
            inside = False
            out.append(c)
        elif pattern.startswith("\\p{", i):
            end = pattern.find("}", i + 3)
            name = pattern[i + 3 : end]
            body = _UCAT[_UCAT_ALIASES[name]]
            out.append(body if inside else "[" + body + "]")
            i = end
        else:
            out.append(c)
        i += 1
    return "".join(out), True


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_PATTERN = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> (regexes in order, ignore_merges, add_bos default, clean_spaces)
_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", "[0-9][0-9][0-9]"]
_STARCODER = [r"\p{N}", GPT2_PATTERN]
PRE_TYPES: dict[str, tuple[list[str], bool, bool, bool]] = {}
for _n in ("default",):
    PRE_TYPES[_n] = (_DEFAULT, False, False, True)
for _n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"):
    PRE_TYPES[_n] = ([LLAMA3_PATTERN], True, True, True)
for _n in ("dbrx", "smaug-bpe"):
    PRE_TYPES[_n] = ([LLAMA3_PATTERN], False, False, True)
for _n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "mpt", "olmo",
           "jais", "exaone4", "a.x-4.0", "mellum", "modern-bert"):
    PRE_TYPES[_n] = ([GPT2_PATTERN], False, False, True)
for _n in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b"):
    PRE_TYPES[_n] = (_STARCODER, False, False, True)
for _n in ("smollm", "command-r"):
    PRE_TYPES[_n] = (_STARCODER, False, False, False)
for _n in ("qwen2", "deepseek-r1-qwen", "megrez"):
    PRE_TYPES[_n] = ([QWEN2_PATTERN], False, False, _n == "megrez")
PRE_TYPES["stablelm2"] = ([QWEN2_PATTERN], False, False, True)
PRE_TYPES["chatglm-bpe"] = PRE_TYPES["glm4"] = ([LLAMA3_PATTERN], False, False, True)
PRE_TYPES["falcon"] = ([r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, "[0-9][0-9][0-9]"], False, False, True)


def _cpt_flags_at(text: str, pos: int, end: int) -> int:
    return _flag(text[pos]) if pos < end else 0


def _split_gpt2(text: str, start: int, end: int, out: list[int]) -> None:
    """GPT-2's pattern as a scanner (llama.cpp's unicode_regex_split_custom_gpt2)."""
    pos = start
    prev_end = start

    def add(e: int) -> int:
        nonlocal prev_end
        n = e - prev_end
        if n > 0:
            out.append(n)
        prev_end = e
        return n

    while pos < end:
        c = text[pos]
        f = _flag(c)
        if c == "'" and pos + 1 < end:
            n1 = text[pos + 1]
            if n1 in "stmd":
                pos += add(pos + 2)
                continue
            if pos + 2 < end and n1 + text[pos + 2] in ("re", "ve", "ll"):
                pos += add(pos + 3)
                continue
        f2 = _cpt_flags_at(text, pos + 1, end) if c == " " else f
        if f2 & (_LETTER | _NUMBER) or (f2 and not f2 & _SPACE):
            kind = f2 & (_LETTER | _NUMBER) or _OTHER
            pos += c == " "
            while True:
                f2 = _cpt_flags_at(text, pos, end)
                if not (f2 & kind if kind != _OTHER else (f2 and not f2 & (_SPACE | _LETTER | _NUMBER))):
                    break
                pos += 1
            add(pos)
            continue
        n_ws = 0
        while _cpt_flags_at(text, pos + n_ws, end) & _SPACE:
            n_ws += 1
        if n_ws > 1 and pos + n_ws < end:
            pos += n_ws - 1
            add(pos)
            continue
        if n_ws > 0:
            pos += n_ws
            add(pos)
            continue
        pos += 1
        add(pos)


def _split_llama3(text: str, start: int, end: int, out: list[int]) -> None:
    """Llama-3's pattern as a scanner (llama.cpp's unicode_regex_split_custom_llama3)."""
    pos = start
    prev_end = start

    def add(e: int) -> int:
        nonlocal prev_end
        n = e - prev_end
        if n > 0:
            out.append(n)
        prev_end = e
        return n

    while pos < end:
        c = text[pos]
        f = _flag(c)
        if c == "'" and pos + 1 < end:
            n1 = text[pos + 1].lower()
            if n1 in ("s", "t", "m", "d"):
                pos += add(pos + 2)
                continue
            if pos + 2 < end and n1 + text[pos + 2].lower() in ("re", "ve", "ll"):
                pos += add(pos + 3)
                continue
        if not (c == "\r" or c == "\n" or f & _NUMBER):
            if f & _LETTER or _cpt_flags_at(text, pos + 1, end) & _LETTER:
                pos += 1
                while _cpt_flags_at(text, pos, end) & _LETTER:
                    pos += 1
                add(pos)
                continue
        if f & _NUMBER:
            ini = pos
            while _cpt_flags_at(text, pos, end) & _NUMBER:
                pos += 1
                if pos - ini >= 3:
                    add(pos)
                    ini = pos
            add(pos)
            continue
        f2 = _cpt_flags_at(text, pos + 1, end) if c == " " else f
        if not f2 & (_SPACE | _LETTER | _NUMBER) and f:
            pos += c == " "
            while f2 and not f2 & (_SPACE | _LETTER | _NUMBER):
                pos += 1
                f2 = _cpt_flags_at(text, pos, end)
            while pos < end and text[pos] in "\r\n":
                pos += 1
            add(pos)
            continue
        n_ws = 0
        last_rn = 0
        while _cpt_flags_at(text, pos + n_ws, end) & _SPACE:
            if text[pos + n_ws] in "\r\n":
                last_rn = pos + n_ws + 1
            n_ws += 1
        if last_rn > 0:
            pos = last_rn
            add(pos)
            continue
        if n_ws > 1 and pos + n_ws < end:
            pos += n_ws - 1
            add(pos)
            continue
        if n_ws > 0:
            pos += n_ws
            add(pos)
            continue
        pos += 1
        add(pos)


_CUSTOM: dict[str, Callable[[str, int, int, list[int]], None]] = {
    GPT2_PATTERN: _split_gpt2,
    LLAMA3_PATTERN: _split_llama3,
}


class PreTokenizer:
    """Splits text into the words BPE merges within, for one `tokenizer.ggml.pre` name."""

    def __init__(self, patterns: list[str]) -> None:
        self._steps: list[tuple[Callable[[str, int, int, list[int]], None] | None,
                                re.Pattern[str] | None, bool]] = []
        for p in patterns:
            custom = _CUSTOM.get(p)
            if custom is not None:
                self._steps.append((custom, None, False))
            else:
                py, collapse = _translate_pattern(p)
                self._steps.append((None, re.compile(py, re.ASCII), collapse))

    def split(self, text: str) -> list[str]:
        """Text -> its words, in order; their concatenation is the text."""
        if not text:
            return []
        lengths = [len(text)]
        collapsed = spaced = None
        for custom, pattern, collapse in self._steps:
            out: list[int] = []
            start = 0
            if custom is not None:
                for n in lengths:
                    custom(text, start, start + n, out)
                    start += n
            else:
                assert pattern is not None
                if collapse:
                    if collapsed is None:
                        collapsed = text.translate(_COLLAPSE_TABLE)
                    subject = collapsed
                else:
                    if spaced is None:
                        spaced = text.translate(_SPACE_TABLE)
                    subject = spaced
                for n in lengths:
                    pos = start
                    for m in pattern.finditer(subject, start, start + n):
                        if m.start() > pos:
                            out.append(m.start() - pos)
                        out.append(m.end() - m.start())
                        pos = m.end()
                    if pos < start + n:
                        out.append(start + n - pos)
                    start += n
            lengths = out
        words = []
        start = 0
        for n in lengths:
            words.append(text[start : start + n])
            start += n
        return words


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table
