"""Hostile chat templates: bounded in time, output, steps and depth; clean one-line errors."""

from __future__ import annotations

import logging
import time
from datetime import datetime

import pytest

from edgerun.text.templates import (
    CHATML,
    BrokenTemplate,
    ChatTemplate,
    ChatTemplateError,
    Limits,
    load_chat_template,
)

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]

HOSTILE = {
    "nested-range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested-range-output": ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}"
                            "{% endfor %}"),
    "repeat-1e8": "{{ 'x' * 10**8 }}",
    "repeat-list": "{{ ([1] * 10**8) | length }}",
    "power-tower": "{{ 10 ** (10 ** 9) }}",
    "div-zero": "{{ 1/0 }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "include": "{% include 'other.j2' %}",
    "import": "{% import 'macros.j2' as m %}{{ m.x() }}",
    "extends": "{% extends 'base.j2' %}",
    "center-filter": "{{ 'a' | center(10**9) }}",
    "ljust-method": "{{ 'a'.ljust(10**9) }}",
    "percent-width": "{{ '%0999999999d' % 1 }}",
    "format-width": "{{ '{:0999999999}'.format(1) }}",
    "concat-doubling": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s | length }}"),
    "plus-doubling": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s | length }}"),
    "output-2mb": "{% for i in range(2000) %}{{ 'y' * 1000 }}{% endfor %}",
    "undefined-call": "{{ nothing() }}",
    "attr-escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "raise": "{{ raise_exception('no system role, please') }}",
}


@pytest.mark.parametrize("src", [pytest.param(v, id=k) for k, v in HOSTILE.items()])
def test_hostile_template_fails_cleanly(src: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError) as ei:
        ChatTemplate(src).render(MSGS)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("chat template")
    # the 1 s budget plus slack for a loaded 2-core machine: never the minutes/GBs unbounded
    assert time.monotonic() - t0 < 20


def test_raise_exception_message_kept() -> None:
    with pytest.raises(ChatTemplateError, match="no system role, please"):
        ChatTemplate(HOSTILE["raise"]).render(MSGS)


def test_strftime_now_and_budget_knobs() -> None:
    assert ChatTemplate("{{ strftime_now('%Y') }}").render(MSGS) == str(datetime.now().year)
    small = Limits(output_chars=10)
    with pytest.raises(ChatTemplateError, match="more than 10 characters"):
        ChatTemplate("{{ 'a' * 6 }}{{ 'b' * 6 }}", limits=small).render(MSGS)
    with pytest.raises(ChatTemplateError, match="steps"):
        ChatTemplate("{% for i in range(1000) %}{% endfor %}", limits=Limits(steps=100)).render(MSGS)


def test_syntax_error_reported_once_at_load(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgerun.templates"):
        t = load_chat_template("{% for m in messages %}{{ m.content }", "<s>", "</s>", "bad.gguf")
    assert isinstance(t, BrokenTemplate)
    assert len([r for r in caplog.records if "bad.gguf" in r.getMessage()]) == 1
    for _ in range(2):
        with pytest.raises(ChatTemplateError, match="bad.gguf: chat template does not compile: line 1"):
            t.render(MSGS)
    assert len(caplog.records) == 1  # not logged again per request


def test_good_templates_render_as_plain_jinja() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    src = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}[S]{{ m.content | trim }}"
           "{% else %}<{{ m.role }}>{{ m.content }}{% endif %}\n{% endfor %}"
           "{% if add_generation_prompt %}<assistant>{% endif %}")
    want = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(src).render(
        messages=MSGS, add_generation_prompt=True, bos_token="<s>")
    assert ChatTemplate(src, "<s>", "</s>").render(MSGS) == want
    assert load_chat_template(None).render(MSGS, True).startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert ChatTemplate(CHATML).render(MSGS, False).endswith("hi<|im_end|>\n")


def test_broken_template_breaks_only_chat_in_run(tmp_path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgerun run` on a model whose template does not compile: plain prompts work, --chat fails
    with one line (before: llama-cpp-python compiled the template at vocabulary load and threw)."""
    from edgerun import cli
    from tests.test_gguf_fuzz import write_tiny

    monkeypatch.setenv("EDGERUN_HUGEPAGES", "0")
    path = write_tiny(tmp_path / "broken-template.gguf",
                      chat_template="{% for m in messages %}{{ m.content }")
    args = ["run", "-m", str(path), "-p", "hi there", "-n", "2", "--temp", "0", "--threads", "1"]
    assert cli.main(args) == 0
    assert cli.main([*args, "--chat"]) == 2
    err = capsys.readouterr().err
    assert "chat template does not compile: line 1" in err and "Traceback" not in err
