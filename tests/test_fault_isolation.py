"""One bad request fails only itself: validation before batching, failures charged per sequence."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgerun.serving.engine import Engine, RequestError
from edgerun.text.sampling import SamplingParams
from tests.test_scheduler import VOCAB, FakeRunner, assert_pool_whole, params, prompt, run_concurrent, solo

POISON = 250  # a valid id (< VOCAB) that the runners below choke on


class StepFailRunner(FakeRunner):
    """Raises inside `forward` whenever a step carries the poison token (a kernel failure)."""

    def forward(self, seqs: list[Any]) -> list[np.ndarray]:
        if any(POISON in np.asarray(s.tokens).tolist() for s in seqs):
            raise RuntimeError("kernel failed on this batch")
        return super().forward(seqs)


class NanRunner(FakeRunner):
    """Returns NaN logits for a sequence holding the poison token once it has 25+ tokens
    (a failure that shows only at sampling time, mid-decode)."""

    def logits_for(self, history: list[int]) -> np.ndarray:
        out = super().logits_for(history)
        if POISON in history and len(history) >= 25:
            out[:] = np.nan
        return out


@pytest.mark.parametrize("runner_cls", [pytest.param(StepFailRunner, id="step-raises"),
                                        pytest.param(NanRunner, id="nan-logits")])
def test_one_failing_sequence_among_8(runner_cls: type[FakeRunner]) -> None:
    expected = [solo(i, max_tokens=30) for i in range(8)]
    bad = 3
    jobs = [(prompt(i), params(i, 30)) for i in range(8)]
    jobs[bad] = (prompt(bad)[:10] + [POISON] + prompt(bad)[10:], params(bad, 30))
    runner = runner_cls()
    with Engine(runner, max_running=8) as eng:
        got = run_concurrent(eng, jobs)
        assert max(len(b) for b in runner.batches) >= 7  # the good ones did share batches
        for i, g in enumerate(got):
            if i == bad:
                assert g[2] == "error"
            else:
                assert g[:3] == expected[i], f"stream {i} differs from its solo run"
        assert eng.stats()["errors"] == 1 and eng.is_alive()
        assert_pool_whole(eng)
        # the engine still serves afterwards
        assert eng.generate(prompt(1), params(1, 30))[:3] == expected[1]


@pytest.mark.parametrize("ids,param", [
    pytest.param([1, VOCAB], "prompt", id="id-eq-vocab"),
    pytest.param([1, -1], "prompt", id="negative-id"),
    pytest.param([1, 2**40], "prompt", id="huge-id"),
    pytest.param([1, True], "prompt", id="bool-id"),
    pytest.param([], "prompt", id="empty"),
])
def test_prompt_ids_validated(ids: list[int], param: str) -> None:
    eng = Engine(FakeRunner())  # not started: refusal happens in submit
    with pytest.raises(RequestError) as ei:
        eng.submit(ids, params(1))
    assert ei.value.param == param


@pytest.mark.parametrize("field,value", [
    pytest.param("temperature", 1e-320, id="subnormal-temperature"),
    pytest.param("temperature", float("nan"), id="nan-temperature"),
    pytest.param("temperature", float("inf"), id="inf-temperature"),
    pytest.param("repeat_penalty", 1e-40, id="tiny-penalty"),
    pytest.param("repeat_penalty", float("nan"), id="nan-penalty"),
    pytest.param("repeat_penalty", 0.0, id="zero-penalty"),
    pytest.param("top_p", float("nan"), id="nan-top-p"),
    pytest.param("min_p", float("nan"), id="nan-min-p"),
    pytest.param("top_k", -1, id="negative-top-k"),
    pytest.param("seed", -1, id="negative-seed"),
    pytest.param("seed", 10**5000, id="5000-digit-seed"),
    pytest.param("max_tokens", 0, id="zero-max-tokens"),
    pytest.param("stop", [""], id="empty-stop"),
])
def test_sampling_params_validated(field: str, value: Any) -> None:
    eng = Engine(FakeRunner())
    with pytest.raises(RequestError) as ei:
        eng.submit(prompt(1), SamplingParams(**{field: value}))
    assert ei.value.param == field and field in str(ei.value)


def test_small_temperature_sampling_stays_finite() -> None:
    """The smallest accepted temperature still draws a token (no overflow to NaN)."""
    from edgerun.text.sampling import MIN_TEMPERATURE, Sampler

    logits = np.array([3.0, 2.5, -1.0, 80.0, 79.99], dtype=np.float32)
    sp = SamplingParams(temperature=MIN_TEMPERATURE, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    assert Sampler(sp).sample(logits) == 3
