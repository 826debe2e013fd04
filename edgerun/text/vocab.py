"""A GGUF vocabulary and its tokenizers (byte-level BPE, SentencePiece-style), exact to llama.cpp.

Read from the `tokenizer.ggml.*` metadata only: tokens, token types, scores, merges,
the pre-tokenizer name and the special-token ids and add-BOS/EOS flags. The rules
below are llama.cpp's (src/llama-vocab.cpp), so that our ids equal its ids:

- Special tokens (control, user-defined, unknown) are cut out of the text first,
  longest text first, each across every fragment left by the longer ones. Control
  and unknown tokens are cut only when `parse_special` is set; user-defined tokens
  always (as HF tokenizers does).
- BPE: pre-tokenize (pretokenize.py), map each word's UTF-8 bytes through GPT-2's
  byte table, merge the lowest-ranked adjacent pair first (ties: leftmost), look the
  final symbols up; an unknown symbol falls back to its single-byte tokens.
- SPM: spaces become U+2581, an optional space is put before text that follows a
  special token (`add_space_prefix`), then the highest-scoring pair of adjacent
  symbols whose concatenation is a token is merged first (ties: leftmost); a final
  symbol that is not a token is re-split along its merges, then into `<0xXX>` bytes.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from edgerun.text.pretokenize import PRE_TYPES, PreTokenizer, bytes_to_unicode

# GGUF token types (tokenizer.ggml.token_type) and llama.cpp's attribute bits
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL = 1, 2, 4, 8
ATTR_USER_DEFINED, ATTR_BYTE, ATTR_LSTRIP, ATTR_RSTRIP = 16, 32, 128, 256
_TYPE_ATTR = {TYPE_UNKNOWN: ATTR_UNKNOWN, TYPE_UNUSED: ATTR_UNUSED, TYPE_NORMAL: ATTR_NORMAL,
              TYPE_CONTROL: ATTR_CONTROL, TYPE_USER_DEFINED: ATTR_USER_DEFINED, TYPE_BYTE: ATTR_BYTE}
_SPECIAL = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN

_K = "tokenizer.ggml."
# Texts llama.cpp recognises as end-of-generation (and marks as control) when present.
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
])
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
                "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
                "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
                "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_SPACE = "\u2581"


class VocabError(ValueError):
    """The GGUF's tokenizer metadata is missing, inconsistent or of an unsupported kind."""


class Vocab:
    """Tokens, attributes and special ids of a GGUF vocabulary, with encode/decode."""

    def __init__(self, md: dict[str, Any]) -> None:
        model = md.get(_K + "model")
        if model not in ("gpt2", "llama"):
            raise VocabError(f"tokenizer.ggml.model '{model}' is not supported (supported: gpt2, llama)")
        self.kind = "bpe" if model == "gpt2" else "spm"
        tokens = md.get(_K + "tokens")
        if not tokens:
            raise VocabError("the GGUF has no tokenizer.ggml.tokens")
        n = len(tokens)
        self.tokens: list[str] = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.token_to_id: dict[str, int] = dict(zip(self.tokens, range(n), strict=True))
        if len(self.token_to_id) != n:
            seen: dict[str, int] = {}
            for i, t in enumerate(self.tokens):
                if seen.setdefault(t, i) != i:
                    raise VocabError(f"duplicate token in vocabulary: {t!r} has ids {seen[t]} and {i}")
        scores = md.get(_K + "scores")
        self.scores: list[float] = ([float(s) for s in _as_list(scores[:n])] if scores is not None
                                    else [0.0] * n)
        if len(self.scores) < n:
            raise VocabError(f"tokenizer.ggml.scores has {len(self.scores)} entries for {n} tokens")
        types = md.get(_K + "token_type")
        if types is not None and len(types) < n:
            raise VocabError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        attr_of = [_TYPE_ATTR.get(t, 0) for t in range(8)]
        self.attrs: list[int] = ([attr_of[t] if 0 <= t < 8 else 0 for t in _as_list(types[:n])]
                                 if types is not None else [ATTR_NORMAL] * n)
        pre_name = md.get(_K + "pre") or "default"
        if self.kind == "bpe":
            if pre_name not in PRE_TYPES:
                raise VocabError(f"tokenizer.ggml.pre '{pre_name}' is not supported "
                                 f"(supported: {', '.join(sorted(PRE_TYPES))})")
            patterns, self.ignore_merges, add_bos, self.clean_spaces = PRE_TYPES[pre_name]
            self.pre = PreTokenizer(patterns)
            merges = md.get(_K + "merges")
            if merges is None:
                raise VocabError("a gpt2 vocabulary needs tokenizer.ggml.merges")
            self.ranks: dict[tuple[str, str], int] = {}
            for i, m in enumerate(merges):
                cut = m.find(" ", 1)  # llama.cpp: the first space after the first character
                a, b = (m[:cut], m[cut + 1:]) if cut >= 0 else ("", "")
                self.ranks.setdefault((a, b), i)
            self.byte_char = bytes_to_unicode()
            self.char_byte = {c: b for b, c in self.byte_char.items()}
            self.add_space_prefix, add_eos = False, False
            bos, eos, unk = 11, 11, -1
        else:
            self.pre_name = pre_name
            self.ignore_merges, self.clean_spaces = False, False
            add_bos, add_eos, self.add_space_prefix = True, False, True
            bos, eos, unk = 1, 2, 0
        self.pre_name = pre_name
        self.add_space_prefix = bool(md.get(_K + "add_space_prefix", self.add_space_prefix))

        def special_id(key: str, default: int) -> int:
            default = default if 0 <= default < n else -1
            v = md.get(_K + key)
            if v is None:
                return default
            v = int(v)
            return v if 0 <= v < n else default

        self.bos_id = special_id("bos_token_id", bos)
        self.eos_id = special_id("eos_token_id", eos)
        self.unk_id = special_id("unknown_token_id", unk)
        self.eot_id = special_id("eot_token_id", -1)
        self.eom_id = special_id("eom_token_id", -1)
        fim = {k: special_id(k + "_token_id", -1) for k in _FIM_TEXTS}
        for old, new in (("prefix", "fim_pre"), ("suffix", "fim_suf"), ("middle", "fim_mid")):
            if fim[new] < 0:
                fim[new] = special_id(old + "_token_id", -1)
        self.add_bos = bool(md.get(_K + "add_bos_token", add_bos))
        self.add_eos = bool(md.get(_K + "add_eos_token", add_eos))
        if self.add_bos and self.bos_id < 0:
            raise VocabError("tokenizer.ggml.add_bos_token is true, "
                             "but tokenizer.ggml.bos_token_id is not set")
        if self.add_eos and self.eos_id < 0:
            raise VocabError("tokenizer.ggml.add_eos_token is true, "
                             "but tokenizer.ggml.eos_token_id is not set")

        def mark_control(i: int) -> None:
            self.attrs[i] |= ATTR_CONTROL

        # Texts that name end-of-turn and FIM tokens when the metadata does not (llama.cpp's rule).
        def by_text(texts: Sequence[str]) -> int:
            for t in texts:
                if t in self.token_to_id:
                    mark_control(self.token_to_id[t])
                    return self.token_to_id[t]
            return -1

        if self.eot_id < 0:
            self.eot_id = by_text(_EOT_TEXTS)
        if self.eom_id < 0:
            self.eom_id = by_text(("<|eom_id|>",))
        for k, texts in _FIM_TEXTS.items():
            if fim[k] < 0:
                fim[k] = by_text(texts)
        for i, t in enumerate(self.tokens):
            if self.attrs[i] & ATTR_CONTROL and "unused" in t:
                self.attrs[i] |= ATTR_UNUSED
        eog = {fim[k] for k in ("fim_pad", "fim_rep", "fim_sep") if fim[k] >= 0}
        for t in _EOG_TEXTS:
            i = self.token_to_id.get(t)
            if i is not None:
                eog.add(i)
                mark_control(i)
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
            if t in self.token_to_id:
                self.attrs[self.token_to_id[t]] = ATTR_USER_DEFINED
        eog |= {i for i in (self.eos_id, self.eot_id, self.eom_id) if i >= 0}
        has = {self.tokens[i] for i in eog}
        if ("<|end|>" in has and "<|call|>" in has and "<|return|>" in has) or \
                ("<|end|>" in has and "<|calls|>" in has and "<|flush|>" in has):
            end = self.token_to_id["<|end|>"]
            eog.discard(end)
            self.attrs[end] = ATTR_USER_DEFINED
        if "<|tool_response>" in has and "</s>" in has:
            s = self.token_to_id["</s>"]
            eog.discard(s)
            self.attrs[s] = ATTR_NORMAL
        self.eog_ids: frozenset[int] = frozenset(eog)

        name = str(md.get("general.name", "")).lower()
        if "phi-3" in name or "phi3" in name:  # llama.cpp strips spaces to the right of Phi-3's specials
            for i, a in enumerate(self.attrs):
                if a & _SPECIAL:
                    self.attrs[i] |= ATTR_RSTRIP
            for t, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                if t in self.token_to_id:
                    i = self.token_to_id[t]
                    self.attrs[i] = self.attrs[i] | ATTR_RSTRIP if on else self.attrs[i] & ~ATTR_RSTRIP

        # Longest first: a special token is never cut out of a longer one.
        self.special_ids = sorted((i for i, a in enumerate(self.attrs) if a & _SPECIAL),
                                  key=lambda i: -len(self.tokens[i]))
        self._pieces: dict[int, bytes] = {}
        self._word_cache: dict[str, list[int]] = {}

    # ---- pieces -------------------------------------------------------------------------------

    def _piece(self, i: int) -> bytes:
        """The bytes token `i` stands for (control tokens: their text), as llama.cpp renders it."""
        a, text = self.attrs[i], self.tokens[i]
        if a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if a & ATTR_NORMAL:
            if self.kind == "spm":
                return text.replace(_SPACE, " ").encode("utf-8")
            out = bytearray()
            for ch in text:
                b = self.char_byte.get(ch)
                if b is None:
                    out += (f"[UNK_BYTE_0x{ch.encode('utf-8').hex()}" + text + "]").encode("utf-8")
                else:
                    out.append(b)
            return bytes(out)
        if a & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def piece(self, i: int, special: bool = True) -> bytes:
        """Token -> bytes; with `special=False` control and unknown tokens render as nothing."""
        if not special and self.attrs[i] & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        p = self._pieces.get(i)
        if p is None:
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} is outside the vocabulary (0..{len(self.tokens) - 1})")
            p = self._pieces[i] = self._piece(i)
        return p

    def detokenize(self, ids: Sequence[int], remove_special: bool = False, special: bool = False) -> bytes:
        """llama_detokenize: pieces joined, the SPM prefix space removed, clean-up of spaces."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for i in ids:
            p = self.piece(i, special)
            if remove_space and p.startswith(b" "):
                p = p[1:]
            remove_space = False
            parts.append(p)
        text = b"".join(parts)
        if self.clean_spaces and text:
            text = _clean_spaces(text)
        return text

    # ---- encode -------------------------------------------------------------------------------

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of the text: a list of raw-text fragments and token ids."""
        frags: list[str | int] = [text]
        for sid in self.special_ids:
            a = self.attrs[sid]
            if not parse_special and a & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            tok = self.tokens[sid]
            if tok not in text:
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    out.append(f)
                    continue
                start = 0
                while True:
                    m = f.find(tok, start)
                    if m < 0:
                        break
                    left = f[start:m]
                    if a & ATTR_LSTRIP:
                        left = _rstrip_c(left)
                    if left:
                        out.append(left)
                    out.append(sid)
                    start = m + len(tok)
                    if a & ATTR_RSTRIP:
                        while start < len(f) and f[start] in _C_SPACES:
                            start += 1
                if start < len(f):
                    out.append(f[start:])
            frags = out
        return frags

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        """llama_tokenize: text -> ids."""
        frags = self._partition(text, parse_special) if text else []
        out: list[int] = []
        if self.kind == "spm":
            prev_special = True
            if add_special and self.add_bos:
                out.append(self.bos_id)
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    f = " " + f
                self._spm(f.replace(" ", _SPACE), out)
                prev_special = False
        else:
            if add_special and self.add_bos:
                out.append(self.bos_id)
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    self._bpe_text(f, out)
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    # ---- BPE ----------------------------------------------------------------------------------

    def _bpe_text(self, text: str, out: list[int]) -> None:
        cache = self._word_cache
        bc = self.byte_char
        for word in self.pre.split(text):
            ids = cache.get(word)
            if ids is None:
                enc = "".join([bc[b] for b in word.encode("utf-8", "surrogatepass")])
                ids = self._bpe_word(enc)
                if len(cache) < 200_000:
                    cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> list[int]:
        t2i = self.token_to_id
        if self.ignore_merges and word in t2i:
            return [t2i[word]]
        syms = list(word)
        n = len(syms)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        ranks = self.ranks
        heap = []
        for i in range(n - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None:
                heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, left, right, joined = heapq.heappop(heap)
            ls, rs = syms[left], syms[right]
            if not ls or not rs or ls + rs != joined:
                continue
            syms[left] = joined
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            p, q = prv[left], nxt[left]
            if p >= 0:
                r = ranks.get((syms[p], joined))
                if r is not None:
                    heapq.heappush(heap, (r, p, left, syms[p] + joined))
            if q >= 0:
                r = ranks.get((joined, syms[q]))
                if r is not None:
                    heapq.heappush(heap, (r, left, q, joined + syms[q]))
        ids = []
        for s in syms:
            if not s:
                continue
            i = t2i.get(s)
            if i is not None:
                ids.append(i)
                continue
            # llama.cpp looks each byte of the symbol's UTF-8 up as a one-byte token:
            # only ASCII bytes can name one.
            for b in s.encode("utf-8"):
                j = t2i.get(chr(b)) if b < 0x80 else None
                if j is not None:
                    ids.append(j)
        return ids

    # ---- SPM ----------------------------------------------------------------------------------

    def _spm(self, text: str, out: list[int]) -> None:
        # llama.cpp's symbols are UTF-8 sequences, split by their lead bytes: whole characters
        # of a valid string, so this works on characters (sizes in characters, not bytes).
        n = len(text)
        if not n:
            return
        starts = list(range(n))
        lens = [1] * n
        prv = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        t2i = self.token_to_id
        scores = self.scores
        heap: list[tuple[float, int, int, int]] = []
        rev_merge: dict[str, tuple[int, int]] = {}

        def try_add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            size = lens[left] + lens[right]
            piece = text[starts[left] : starts[left] + size]
            tid = t2i.get(piece)
            if tid is None:
                return
            heapq.heappush(heap, (-scores[tid], left, right, size))
            rev_merge[piece] = (left, right)

        for i in range(1, n):
            try_add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if lens[left] == 0 or lens[right] == 0 or lens[left] + lens[right] != size:
                continue
            lens[left] += lens[right]
            lens[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            try_add(prv[left], left)
            try_add(left, nxt[left])
        i = 0
        while i != -1:
            stack = [i]
            while stack:  # resegment, depth-first, left part first
                s = stack.pop()
                piece = text[starts[s] : starts[s] + lens[s]]
                tid = t2i.get(piece)
                if tid is not None:
                    out.append(tid)
                    continue
                pair = rev_merge.get(piece)
                if pair is None:
                    for b in piece.encode("utf-8", "surrogatepass"):
                        out.append(self._byte_token(b))
                    continue
                stack.append(pair[1])
                stack.append(pair[0])
            i = nxt[i]

    def _byte_token(self, b: int) -> int:
        tid = self.token_to_id.get(f"<0x{b:02X}>")
        if tid is None:
            tid = self.token_to_id.get(chr(b)) if b < 0x80 else None
            if tid is None:
                raise VocabError(f"the vocabulary has no token for byte 0x{b:02X} "
                                 f"(no <0x{b:02X}> byte token)")
        return tid




def _as_list(a: Any) -> list[Any]:
    return a.tolist() if hasattr(a, "tolist") else list(a)

_C_SPACES = " \t\n\v\f\r"


def _rstrip_c(s: str) -> str:
    return s.rstrip(_C_SPACES)


def _clean_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces: ' ?' -> '?', ' ' ' -> ''', ' 's' -> ''s', ..."""
    t = bytearray(text)
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            out.pop()
        out.append(x)
    t, out = out, bytearray(out[:1])
    i = 1
    while i < len(t):
        x = t[i]
        if x == 0x27 and i + 1 < len(t) and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()  # the space before and the one after go
            out.append(x)
            t[i + 1] = 0  # llama.cpp overwrites the skipped space; the next test reads it
            i += 2
            continue
        out.append(x)
        i += 1
    t, out = out, bytearray(out[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < len(t):
            x1 = t[i + 1]
            if x1 in b"sm" or (i + 2 < len(t) and bytes(t[i + 1 : i + 3]) in (b"re", b"ve")):
                out.pop()
        out.append(x)
    return bytes(out)
