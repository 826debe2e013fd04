"""`Engine(deterministic=True)`: greedy output independent of batch composition and prefix-cache
hits, on the real 0.5B model (8 concurrent streams against each one run alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.serving.engine import Engine
from edgerun.text.sampling import SamplingParams

pytestmark = [pytest.mark.real, pytest.mark.slow]

SYSTEM = "You are a careful assistant. Answer in one short paragraph about the topic: "
TOPICS = ["tides", "the printing press in fifteenth century Europe and its effect on literacy", "compilers",
          "why the sky is blue", "hash tables and what makes a good hash function for strings",
          "bread", "the history of the bicycle", "photosynthesis in desert plants such as cacti and agave"]
PARAMS = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, seed=11, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def runner(qwen05_path: Path):  # type: ignore[no-untyped-def]
    from edgerun.runtime.runner import Runner

    return Runner(qwen05_path, n_ctx=512, batch_tiles=True)


def prompts(runner) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [runner.tokenizer.encode(SYSTEM + t) for t in TOPICS]


def outputs(runner, deterministic: bool, together: bool, sp: SamplingParams) -> list[list[int]]:  # type: ignore[no-untyped-def]
    with Engine(runner, max_running=8, deterministic=deterministic) as eng:
        ps = prompts(runner)
        if together:
            handles = [eng.submit(p, sp) for p in ps]
            return [[t for ev in h.events(timeout=600) for t in ev.token_ids] for h in handles]
        return [eng.generate(p, sp)[1] for p in ps]  # one at a time: later ones hit the prefix cache


@pytest.mark.parametrize("sp", [pytest.param(PARAMS, id="greedy"), pytest.param(SEEDED, id="seeded")])
def test_concurrent_equals_solo_when_deterministic(runner, sp: SamplingParams) -> None:  # type: ignore[no-untyped-def]
    solo = outputs(runner, True, False, sp)
    together = outputs(runner, True, True, sp)
    differ = [i for i in range(len(TOPICS)) if solo[i] != together[i]]
    assert differ == [], f"streams {differ} differ from their solo runs"
    assert all(len(o) == 16 for o in solo)


def test_how_often_they_differ_without_it(runner) -> None:  # type: ignore[no-untyped-def]
    """Not an assertion on the default mode (it is allowed to differ): the count is reported."""
    solo = outputs(runner, False, False, PARAMS)
    together = outputs(runner, False, True, PARAMS)
    differ = sum(a != b for a, b in zip(solo, together, strict=True))
    print(f"\nwithout --deterministic: {differ} of {len(TOPICS)} concurrent greedy streams differ from solo")


def test_run_path_gives_the_deterministic_servers_answer(runner) -> None:  # type: ignore[no-untyped-def]
    """`edgerun run/chat --deterministic` (generate.stream with deterministic=True) gives the tokens
    the deterministic engine gives the same prompt among 7 others."""
    from edgerun.generate import stream

    together = outputs(runner, True, True, PARAMS)
    for i, p in enumerate(prompts(runner)[:3]):
        got = [t for ev in stream(runner, p, PARAMS, deterministic=True) for t in ev.token_ids]
        assert got == together[i], f"prompt {i}"
