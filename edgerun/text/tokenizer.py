"""Tokenizer (from the GGUF vocabulary, exact to llama.cpp's ids) and chat templates (sandboxed jinja2)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgerun.quant.gguf_file import GGUFFile
from edgerun.text.vocab import Vocab


class ChatTemplateError(ValueError):
    """The model's chat template failed to render the conversation."""


def _raise(msg: str) -> None:
    raise TemplateError(msg)


# Fallback when a model has no template: ChatML, as llama.cpp and Ollama do.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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
        """Render messages with the GGUF's template in a sandboxed jinja2 environment."""
        src = template or self.chat_template or CHATML
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            tpl = env.from_string(src)
            return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                              bos_token=self._bos_text, eos_token=self._eos_text, tools=None)
        except TemplateError as e:
            raise ChatTemplateError(f"chat template error: {e}") from None

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Render and tokenize; BOS is added only if the template did not write it."""
        text = self.apply_chat_template(messages, add_generation_prompt)
        add_bos = self.add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self.encode(text, add_bos=add_bos, special=True)


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
