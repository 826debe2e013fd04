"""Tokenizer (from the GGUF vocabulary, exact to llama.cpp's ids) and chat templates (sandboxed jinja2)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from edgerun.quant.gguf_file import GGUFFile
from edgerun.text.templates import (
    CHATML,
    ChatTemplate,
    ChatTemplateError,
    encode_conversation,
    load_chat_template,
)
from edgerun.text.vocab import Vocab

__all__ = ["CHATML", "ChatTemplateError", "StreamDecoder", "Tokenizer"]


class Tokenizer:
    """Tokenization from the GGUF's own vocabulary (text/vocab.py), with llama.cpp's ids."""

    def __init__(self, path: str | os.PathLike, gguf_file: GGUFFile | None = None) -> None:
        md = (gguf_file or GGUFFile(path)).metadata
        self.vocab = Vocab(md)
        self.vocab_size = len(self.vocab.tokens)
        self.bos_id = self.vocab.bos_id
        self.eos_id = self.vocab.eos_id
        self.add_bos = self.vocab.add_bos
        self.chat_template: str | None = md.get("tokenizer.chat_template")
        self.eos_ids: set[int] = set(self.vocab.eog_ids)
        if self.eos_id >= 0:
            self.eos_ids.add(self.eos_id)
        self._bos_text = self.piece(self.bos_id) if self.bos_id >= 0 else ""
        self._eos_text = self.piece(self.eos_id) if self.eos_id >= 0 else ""
        self.chat = load_chat_template(self.chat_template, self._bos_text, self._eos_text,
                                       os.path.basename(os.fspath(path)))

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Text -> ids, as llama.cpp's `llama_tokenize`.

        `add_bos` is llama.cpp's `add_special` (the model's BOS, and EOS where its metadata
        asks for one); `None` follows the metadata. `special` parses control-token text such as
        `<|im_start|>` into its id; the server turns it off for user content.
        """
        return self.vocab.tokenize(text, self.add_bos if add_bos is None else add_bos, special)

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes of one token, control tokens included."""
        return self.vocab.piece(token_id, special=True)

    def piece(self, token_id: int) -> str:
        return self.piece_bytes(token_id).decode("utf-8", errors="replace")

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text without control tokens (llama.cpp's `llama_detokenize`)."""
        text = self.vocab.detokenize(ids, remove_special=False, special=False)
        return text.decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            template: str | None = None) -> str:
        """Render messages with the GGUF's template (sandboxed, bounded: see text/templates.py)."""
        chat = self.chat if template is None else ChatTemplate(template, self._bos_text, self._eos_text)
        return chat.render(messages, add_generation_prompt)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Render and tokenize; BOS is added only if the template did not write it; control-token
        text typed inside user/tool content stays text (see text/templates.py)."""
        return encode_conversation(self, messages, add_generation_prompt)


class StreamDecoder:
    """Incremental detokenizer that never splits a UTF-8 character."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.buf = b""

    def push(self, token_id: int) -> str:
        self.buf += self.tok.vocab.piece(token_id, special=False)
        try:
            text = self.buf.decode("utf-8")
        except UnicodeDecodeError as e:
            if len(self.buf) - e.start >= 4:  # invalid, not merely incomplete
                text = self.buf.decode("utf-8", errors="replace")
            else:
                text = self.buf[: e.start].decode("utf-8")
                self.buf = self.buf[e.start:]
                return text
        self.buf = b""
        return text

    def flush(self) -> str:
        text = self.buf.decode("utf-8", errors="replace")
        self.buf = b""
        return text


def tokenize_text(path: str | os.PathLike, text: str,
                  parse_special: bool = True) -> tuple[Tokenizer, list[int]]:
    """`edgerun tokenize`: the ids of `text` under the model's BOS rule (reads only the GGUF's metadata)."""
    tok = Tokenizer(path)
    return tok, tok.encode(text, add_bos=None, special=parse_special)


def format_tokens(tok: Tokenizer, ids: Sequence[int], as_json: bool) -> str:
    """`{"tokens": [...]}` with `as_json`, else one `id 'piece'` line per token."""
    if as_json:
        import json

        return json.dumps({"tokens": list(ids)})
    return "\n".join(f"{i:>7} {tok.piece(i)!r}" for i in ids)
