"""Tokenizer (llama.cpp's, vocab-only) and chat templates (sandboxed jinja2)."""

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

__all__ = ["CHATML", "ChatTemplateError", "StreamDecoder", "Tokenizer"]


class _NoChatHandler:
    """Stands in for llama-cpp-python's Jinja2ChatFormatter while the vocabulary loads: that one
    compiles the GGUF's template unsandboxed-by-budget and throws on a broken one, and edgerun
    renders templates itself (text/templates.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def to_chat_handler(self) -> None:
        return None


def _load_vocab(llama_cpp: Any, path: str) -> Any:
    from llama_cpp import llama as llama_mod

    saved = llama_mod.llama_chat_format.Jinja2ChatFormatter
    llama_mod.llama_chat_format.Jinja2ChatFormatter = _NoChatHandler
    try:
        return llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    finally:
        llama_mod.llama_chat_format.Jinja2ChatFormatter = saved


class Tokenizer:
    """Exact GGUF tokenization through llama-cpp-python with `vocab_only=True`."""

    def __init__(self, path: str | os.PathLike, gguf_file: GGUFFile | None = None) -> None:
        import llama_cpp

        self._llama = _load_vocab(llama_cpp, str(path))
        md = (gguf_file or GGUFFile(path)).metadata
        self.vocab_size = int(self._llama.n_vocab())
        self.bos_id = int(md.get("tokenizer.ggml.bos_token_id", self._llama.token_bos()))
        self.eos_id = int(md.get("tokenizer.ggml.eos_token_id", self._llama.token_eos()))
        # llama.cpp's default when the key is absent: add BOS for SPM vocabularies.
        default_bos = md.get("tokenizer.ggml.model") == "llama"
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", default_bos))
        self.chat_template: str | None = md.get("tokenizer.chat_template")
        vocab = self._llama._model.vocab
        lib = llama_cpp.llama_cpp
        self.eos_ids: set[int] = {
            i for i in range(self.vocab_size) if lib.llama_vocab_is_eog(vocab, i)
        } if self.vocab_size < 1_000_000 else {self.eos_id}
        self.eos_ids.add(self.eos_id)
        self._bos_text = self.piece(self.bos_id) if self.bos_id >= 0 else ""
        self._eos_text = self.piece(self.eos_id) if self.eos_id >= 0 else ""
        self.chat = load_chat_template(self.chat_template, self._bos_text, self._eos_text,
                                       os.path.basename(os.fspath(path)))

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Text -> ids. `add_bos=None` follows the model's metadata."""
        bos = self.add_bos if add_bos is None else add_bos
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=bos, special=special))

    def piece_bytes(self, token_id: int) -> bytes:
        return self._llama.detokenize([token_id], special=True)

    def piece(self, token_id: int) -> str:
        return self.piece_bytes(token_id).decode("utf-8", errors="replace")

    def decode(self, ids: Sequence[int]) -> str:
        return self._llama.detokenize(list(ids), special=False).decode("utf-8", errors="replace")

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
        self.buf += self.tok._llama.detokenize([token_id], special=False)
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
