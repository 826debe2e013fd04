"""Chat templates: untrusted jinja from a GGUF file, compiled once and rendered under budgets.

A model's `tokenizer.chat_template` is code written by whoever made the file. It runs in
jinja2's immutable sandbox (no attribute escapes, no mutation of our objects) and, on top,
under limits that the sandbox alone does not give:

- time: a render stops after `Limits.seconds` (1 s), checked on every line the template's
  code runs and every Python call it makes (a trace function on the rendering thread only);
- loop steps: at most `Limits.steps` lines of template code per render (nested `range` loops);
- recursion: at most `Limits.depth` nested template frames (recursive macros);
- output: at most `Limits.output_chars` characters (1 MB), counted as the output streams;
- size of values made in one operation: `*`, `**`, `%`, `+`, `~` and calls whose integer
  arguments could build a string or list over the output limit are refused before they run
  (`'x' * 10**8`, `10 ** 10 ** 9`, `'a'.ljust(10**9)`, `x | center(10**9)`).

`{% include %}`, `{% import %}` and `{% extends %}` have no loader and fail cleanly. A
template that does not compile is reported once, when `ChatTemplate` is built; `render`
raises `ChatTemplateError` (a ValueError) with a one-line message for every failure.
`raise_exception(msg)` and `strftime_now(fmt)` behave as in llama.cpp's jinja.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["CHATML", "ChatTemplate", "ChatTemplateError", "Limits", "encode_conversation",
           "load_chat_template"]

log = logging.getLogger("edgerun.templates")

# Fallback when a model has no template: ChatML, as llama.cpp and Ollama do.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TEMPLATE_FILE = "<template>"  # the code object name jinja gives templates made by from_string


class ChatTemplateError(ValueError):
    """The model's chat template cannot compile, or failed to render this conversation."""


@dataclass(frozen=True)
class Limits:
    """Budgets for one render."""

    seconds: float = 1.0
    output_chars: int = 1_000_000
    steps: int = 5_000_000  # lines of template code executed
    depth: int = 64  # nested template frames (macro recursion)


class _OverBudget(Exception):
    """Raised inside the template's code when a budget runs out."""


class _Budget:
    """The trace function that enforces time, step and depth budgets on the rendering thread."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.steps = 0
        self.depth = 0
        self.calls = 0

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"took longer than {self.limits.seconds:g} s")

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        self.calls += 1
        if self.calls & 255 == 0:
            self._check_time()
        if frame.f_code.co_filename != _TEMPLATE_FILE:
            return None  # no line events for jinja's and Python's own code: only calls counted
        self.depth += 1
        if self.depth > self.limits.depth:
            raise _OverBudget(f"nests deeper than {self.limits.depth} template frames (recursion?)")
        return self.local_trace

    def local_trace(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "line":
            self.steps += 1
            if self.steps > self.limits.steps:
                raise _OverBudget(f"ran more than {self.limits.steps} steps (an endless loop?)")
            if self.steps & 255 == 0:
                self._check_time()
        elif event == "return":
            self.depth -= 1
        return self.local_trace


def _size_guard(limit: int) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > limit:
            shown = str(v) if abs(v) < 10**12 else f"of {v.bit_length()} bits"
            raise SecurityError(f"the integer {shown} is over the template's size limit ({limit})")

    return check


def _length(v: Any) -> int:
    return len(v) if isinstance(v, (str, bytes, list, tuple)) else 0


class _Generator(CodeGenerator):
    """Compiles `a ~ b` to a size-checked join (jinja calls its own str_join otherwise)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.er_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Env(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus size checks on operators, calls and filters."""

    code_generator_class = _Generator
    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def __init__(self, limits: Limits) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True)
        self.er_limits = limits
        self._check_int = _size_guard(limits.output_chars)
        self.filters = {name: self._guarded(f) for name, f in self.filters.items()}

    def _guarded(self, f: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            for a in (*args[1:], *kwargs.values()):  # args[0] is the filtered value (or context)
                self._check_int(a)
            return f(*args, **kwargs)

        for attr in ("jinja_pass_arg",):  # keep @pass_context / @pass_environment markers
            if hasattr(f, attr):
                setattr(call, attr, getattr(f, attr))
        call.__name__ = getattr(f, "__name__", "filter")
        return call

    def er_concat(self, parts: Iterable[Any]) -> str:
        out = "".join(map(str, parts))
        if len(out) > self.er_limits.output_chars:
            raise SecurityError(f"a string of {len(out)} characters is over the output limit")
        return out

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        limit = self.er_limits.output_chars
        if operator_ == "*":
            n = right if _length(left) else left if _length(right) else None
            if n is not None and isinstance(n, int) and max(_length(left), _length(right)) * n > limit:
                raise SecurityError("repetition over the template's size limit")
        elif operator_ == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                    right * max(abs(left).bit_length(), 1) > 4096:
                raise SecurityError("power over the template's size limit")
        elif operator_ == "%" and isinstance(left, str):
            self._check_format(left)
        elif operator_ == "+" and _length(left) + _length(right) > limit:
            raise SecurityError("a value over the template's size limit")
        return super().call_binop(context, operator_, left, right)

    def _check_format(self, fmt: str) -> None:
        digits = 0
        for ch in fmt:  # a width or precision of 7+ digits builds a string over the limit
            digits = digits + 1 if ch.isdigit() else 0
            if digits > 6:
                raise SecurityError("a format width over the template's size limit")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:  # value is some_str.format / .format_map: check some_str's widths
            self._check_format(value.__self__)
        return wrapped

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        for a in (*args, *kwargs.values()):
            __self._check_int(a)
        return super().call(__context, __obj, *args, **kwargs)


def raise_exception(message: str) -> None:
    """The template's own error (llama.cpp's jinja: the message becomes the error)."""
    raise TemplateError(str(message))


def strftime_now(fmt: str) -> str:
    """The current local time formatted with `fmt` (llama.cpp's jinja helper)."""
    if not isinstance(fmt, str) or len(fmt) > 256:
        raise TemplateError("strftime_now needs a short format string")
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template; `render` applies the budgets in `limits`."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "",
                 limits: Limits | None = None) -> None:
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.limits = limits or Limits()
        self._env = _Env(self.limits)
        self._env.globals["raise_exception"] = raise_exception
        self._env.globals["strftime_now"] = strftime_now
        try:
            self._tpl = self._env.from_string(source)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template does not compile: line {e.lineno}: {e.message}") from None
        except (TemplateError, RecursionError, MemoryError, ValueError) as e:
            raise ChatTemplateError(f"chat template does not compile: {type(e).__name__}: {e}") from None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               **extra: Any) -> str:
        """The conversation as the model's prompt text; ChatTemplateError on any failure."""
        ctx = {"messages": messages, "add_generation_prompt": add_generation_prompt,
               "bos_token": self.bos_token, "eos_token": self.eos_token, "tools": None} | extra
        budget = _Budget(self.limits)
        parts: list[str] = []
        size = 0
        old = sys.gettrace()
        sys.settrace(budget.global_trace)
        try:
            for chunk in self._tpl.generate(**ctx):
                size += len(chunk)
                if size > self.limits.output_chars:
                    raise _OverBudget(f"wrote more than {self.limits.output_chars} characters")
                parts.append(chunk)
        except _OverBudget as e:
            raise ChatTemplateError(f"chat template stopped: it {e}") from None
        except RecursionError:
            raise ChatTemplateError("chat template stopped: recursion too deep") from None
        except MemoryError:
            raise ChatTemplateError("chat template stopped: out of memory") from None
        except TemplateError as e:  # includes SecurityError, UndefinedError, raise_exception
            raise ChatTemplateError(f"chat template error: {e.message or type(e).__name__}") from None
        except Exception as e:  # the template's own runtime errors: 1/0, bad types, ...
            raise ChatTemplateError(f"chat template error: {type(e).__name__}: {e}") from None
        finally:
            sys.settrace(old)
        return "".join(parts)



class BrokenTemplate:
    """Stands in for a model's template that does not compile: every render raises its error."""

    def __init__(self, error: ChatTemplateError) -> None:
        self.error = error

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               **extra: Any) -> str:
        raise ChatTemplateError(str(self.error))


def load_chat_template(source: str | None, bos_token: str = "", eos_token: str = "",
                       model_name: str = "model") -> ChatTemplate | BrokenTemplate:
    """Compile a model's template once, at load (ChatML when it has none).

    A template that does not compile is logged here, once, and only chat rendering fails
    afterwards: completions and plain-prompt runs of the same model still work.
    """
    if source is not None and not isinstance(source, str):
        err = ChatTemplateError(f"{model_name}: tokenizer.chat_template is not a string")
        log.warning("%s", err)
        return BrokenTemplate(err)
    try:
        return ChatTemplate(source or CHATML, bos_token, eos_token)
    except ChatTemplateError as e:
        err = ChatTemplateError(f"{model_name}: {e}")
        log.warning("%s (chat requests will fail; plain prompts work)", err)
        return BrokenTemplate(err)


def _content_spans(chat: Any, text: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                   which: list[int]) -> list[tuple[int, int]]:
    """Exact spans of the contents of `messages[i]` (i in `which`) in the rendered `text`.

    The conversation is rendered again with each such content replaced by a unique marker; if
    putting the contents (or, for templates that trim them, the stripped contents) back in
    place of the markers gives `text` again, the markers' places are the spans.
    """
    marks = {i: f"\ue000{i}\ue001" for i in which}
    probe = [dict(m, content=marks[i]) if i in marks else m for i, m in enumerate(messages)]
    marked = chat.render(probe, add_generation_prompt)
    for strip in (False, True):
        out: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = n = 0
        while True:
            hits = [(marked.find(mk, pos), i) for i, mk in marks.items()]
            hits = [(j, i) for j, i in hits if j >= 0]
            if not hits:
                break
            j, i = min(hits)
            out.append(marked[pos:j])
            n += j - pos
            c = messages[i]["content"].strip() if strip else messages[i]["content"]
            spans.append((n, n + len(c)))
            out.append(c)
            n += len(c)
            pos = j + len(marks[i])
        out.append(marked[pos:])
        if "".join(out) == text and spans:
            return spans
    raise ChatTemplateError("a message's content holds control-token text and the chat template "
                            "changes content; it cannot be tokenized safely")


PLAIN_ROLES = ("user", "tool")


def encode_conversation(tokenizer: Any, messages: list[dict[str, Any]],
                        add_generation_prompt: bool = True) -> list[int]:
    """Render `messages` with `tokenizer.chat` and tokenize, with control tokens parsed only where
    the template wrote them: text like `<|im_end|>` inside user or tool content stays text.

    The rendered prompt is tokenized in one piece with special-token parsing on, exactly as
    before, unless some user/tool content holds text that parses as a control token; then that
    content's span is tokenized with parsing off (`tokenizer.encode(..., special=False)`, the
    only call that needs porting to another tokenizer) and the template's text around it with
    parsing on. BOS is added only if the template did not write it.
    """
    text = tokenizer.chat.render(messages, add_generation_prompt)
    bos_text = getattr(tokenizer, "_bos_text", "")
    add_bos = bool(tokenizer.add_bos) and not (bos_text and text.startswith(bos_text))
    risky = [i for i, m in enumerate(messages)
             if m.get("role") in PLAIN_ROLES and isinstance(m.get("content"), str) and m["content"]
             and tokenizer.encode(m["content"], add_bos=False, special=True)
             != tokenizer.encode(m["content"], add_bos=False, special=False)]
    spans = _content_spans(tokenizer.chat, text, messages, add_generation_prompt, risky) if risky else []
    if not spans:
        return tokenizer.encode(text, add_bos=add_bos, special=True)
    ids: list[int] = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None and \
        tokenizer.bos_id >= 0 else []
    pos = 0
    for a, b in spans:
        if a > pos:
            ids += tokenizer.encode(text[pos:a], add_bos=False, special=True)
        ids += tokenizer.encode(text[a:b], add_bos=False, special=False)
        pos = b
    if pos < len(text):
        ids += tokenizer.encode(text[pos:], add_bos=False, special=True)
    return ids
