"""Speculative decoding: proposers, the acceptance rule, adaptive k, and the distribution test on
synthetic models (the real-model lossless tests are in test_speculative_real.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgerun.serving import speculative as sp
from edgerun.text.sampling import Sampler, SamplingParams


def chi2_sf(x: float, df: int) -> float:
    """P(chi-square with df degrees of freedom > x): 1 - the regularized lower gamma P(df/2, x/2)."""
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    # series for P(a, z); fine for the df and statistics of these tests
    term = 1.0 / a
    total = term
    n = 1
    while term > total * 1e-15 and n < 10000:
        term *= z / (a + n)
        total += term
        n += 1
    p_lower = math.exp(-z + a * math.log(z) - math.lgamma(a)) * total
    return max(0.0, 1.0 - p_lower)


def chi2_test(counts: dict, expected_p: dict) -> tuple[float, int, float]:
    """Chi-square statistic, degrees of freedom and p-value of observed counts against expected
    probabilities; cells expecting fewer than 5 are pooled (and anything observed outside the
    expected support lands there too)."""
    n = sum(counts.values())
    obs, exp = [], []
    pool_o, pool_e = 0.0, 0.0
    for key, p in expected_p.items():
        if p * n >= 5:
            obs.append(counts.get(key, 0))
            exp.append(p * n)
        else:
            pool_o += counts.get(key, 0)
            pool_e += p * n
    pool_o += sum(c for key, c in counts.items() if key not in expected_p)
    if pool_e > 0 or pool_o > 0:
        obs.append(pool_o)
        exp.append(max(pool_e, 1e-9))
    stat = float(sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True)))
    df = len(obs) - 1
    return stat, df, chi2_sf(stat, df)


def test_chi2_sf_matches_known_values():
    # textbook critical values: P(X > 3.841 | df=1) = 0.05, P(X > 18.307 | df=10) = 0.05
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-3)
    assert chi2_sf(18.307, 10) == pytest.approx(0.05, abs=1e-3)
    assert chi2_sf(29.588, 10) == pytest.approx(0.001, abs=1e-4)


# ----------------------------------------------------------------------------- prompt lookup


@pytest.mark.parametrize(("history", "k", "want"), [
    pytest.param([1, 2, 3, 4, 9, 2, 3], 3, [4, 9, 2], id="bigram-match"),
    pytest.param([2, 3, 7, 5, 2, 3, 8, 9, 2, 3], 2, [8, 9], id="most-recent-of-two"),
    pytest.param([5, 6, 7, 1, 6, 7, 2, 9, 6, 7], 1, [2], id="prefers-recent-equal-length"),
    pytest.param([1, 2, 3, 9, 2, 3, 4, 8, 1, 2, 3], 2, [9, 2], id="longer-ngram-wins"),
    pytest.param([1, 2, 3], 4, [], id="no-match"),
    pytest.param([4, 4], 3, [4], id="runs-to-the-end"),
])
def test_lookup_propose(history, k, want):
    assert sp.lookup_propose(history, k, ngram_max=4) == want


def test_lookup_longest_match_beats_recent_short_one():
    # the tail (1, 2, 3) occurs at the start; a later (2, 3)... would propose 0 after it
    h = [1, 2, 3, 5, 6, 2, 3, 0, 0, 1, 2, 3]
    assert sp.lookup_propose(h, 2, ngram_max=3) == [5, 6]
    assert sp.lookup_propose(h, 2, ngram_max=2) == [0, 0]


# ----------------------------------------------------------------------------- acceptance rule


def test_verify_greedy_is_the_samplers_argmax():
    rng = np.random.default_rng(0)
    lg = rng.standard_normal((4, 20)).astype(np.float32)
    params = SamplingParams(temperature=0.0)
    am = [int(np.argmax(r)) for r in lg]
    # all three proposals right: 3 accepted plus the bonus token
    assert sp.verify(lg, am[:3], None, [1], Sampler(params)) == (am, 3)
    # second one wrong: one accepted, then the correction
    bad = [am[0], (am[1] + 1) % 20, am[2]]
    assert sp.verify(lg, bad, None, [1], Sampler(params)) == ([am[0], am[1]], 1)


def test_verify_greedy_applies_the_repeat_penalty_with_the_proposals_in_history():
    lg = np.zeros((2, 5), np.float32)
    lg[0, 3], lg[1, 3], lg[1, 1] = 2.0, 2.0, 1.5
    params = SamplingParams(temperature=0.0, repeat_penalty=2.0)
    # after proposing 3, the penalty halves token 3's logit at the next position: 1 wins
    assert sp.verify(lg, [3], None, [0], Sampler(params)) == ([3, 1], 1)


def _dist_from_logits(lg: np.ndarray, params: SamplingParams) -> np.ndarray:
    ids, pr = sp.sampling_dist(params, lg, [])
    out = np.zeros(len(lg))
    out[ids] = pr
    return out


@pytest.mark.parametrize("kind", ["draft", "lookup"])
def test_rejection_rule_keeps_the_target_distribution(kind, monkeypatch):
    """One proposal from q, verified against p: the first output token is distributed as p.
    The same test fails when the rule is broken (rejections drawn from p instead of the residual)."""
    rng = np.random.default_rng(1)
    v = 6
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    tl = rng.standard_normal((2, v)).astype(np.float32) * 1.5
    dl = (tl[0] + rng.standard_normal(v).astype(np.float32) * 1.5)
    p = _dist_from_logits(tl[0], params)
    q_ids, q_pr = sp.sampling_dist(params, dl, [])
    q = np.zeros(v)
    q[q_ids] = q_pr

    def run(n: int) -> dict:
        counts: dict = {}
        sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5))
        draw = np.random.default_rng(6)
        for _ in range(n):
            if kind == "draft":
                x = int(draw.choice(v, p=q))
                toks, _ = sp.verify(tl, [x], [(q_ids, q_pr)], [], sampler)
            else:
                toks, _ = sp.verify(tl, [int(np.argmax(q))], None, [], sampler)  # a fixed guess
            counts[toks[0]] = counts.get(toks[0], 0) + 1
        return counts

    expected = {i: float(p[i]) for i in range(v)}
    _, df, pval = chi2_test(run(6000), expected)
    assert pval > 1e-3, f"correct rule rejected (p = {pval:.2e}, df {df})"
    monkeypatch.setattr(sp, "residual", lambda p_, q_: p_)
    _, _, pval_bad = chi2_test(run(6000), expected)
    assert pval_bad < 1e-3, f"broken rule not detected (p = {pval_bad:.2e})"


# ----------------------------------------------------------------------------- adaptive k


def test_expected_tokens_and_best_k():
    assert sp.expected_tokens(0.0, 5) == 1.0
    assert sp.expected_tokens(1.0, 5) == 6.0
    assert sp.expected_tokens(0.5, 2) == pytest.approx(1.75)
    # a free proposer (lookup) with high acceptance proposes many; a costly draft with low
    # acceptance proposes none; the chosen k grows with acceptance
    assert sp.best_k(0.9, 16, 0.0) >= 8
    assert sp.best_k(0.3, 8, 0.4) == 0
    ks = [sp.best_k(a, 8, 0.4) for a in (0.5, 0.7, 0.8, 0.9)]
    assert ks == sorted(ks) and ks[-1] > ks[0]


def test_seqspec_acceptance_estimate_follows_the_results():
    st = sp.SeqSpec(alpha=0.5)
    for _ in range(10):
        st.record(proposed=8, accepted=8, produced=9)
    assert st.alpha > 0.9
    for _ in range(10):
        st.record(proposed=8, accepted=0, produced=1)
    assert st.alpha < 0.5
    assert sp.best_k(st.alpha, 8, 0.4) == 0  # a draft costing 40% of a step is not worth it now
    s = st.stats()
    assert (s.proposed, s.accepted, s.steps, s.tokens) == (160, 80, 20, 100)
    assert s.acceptance_rate == 0.5 and s.tokens_per_step == 5.0


def test_config_validation():
    with pytest.raises(sp.SpeculativeError, match="exclusive"):
        sp.SpecConfig(draft_model="x", lookup=True)
    with pytest.raises(sp.SpeculativeError, match="draft-max"):
        sp.SpecConfig(lookup=True, draft_max=0)
    import argparse

    ap = argparse.ArgumentParser()
    sp.add_speculative_args(ap)
    assert sp.config_from_args(ap.parse_args([])) is None
    with pytest.raises(sp.SpeculativeError, match="--draft-max needs"):
        sp.config_from_args(ap.parse_args(["--draft-max", "4"]))
    cfg = sp.config_from_args(ap.parse_args(["--lookup", "--draft-max", "5"]))
    assert cfg is not None and cfg.lookup and cfg.k_max == 5


# ----------------------------------------------------------------------------- synthetic models


def _synth(tmp: Path, name: str, seed: int, gain: float, vocab: int = 300) -> Path:
    from tests.synth import bench_gpu_module

    bench = bench_gpu_module()
    shape = bench.Shape("syn", "llama", 2, 64, 128, 4, 2, vocab, ctx=256)
    return bench.write_synthetic_gguf(tmp / name, shape, qtype=8, seed=seed, gain=gain, exact=True)


@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory):
    """A target and a draft that is a differently scaled copy (correlated, not equal)."""
    from edgerun.runtime.runner import Runner

    d = tmp_path_factory.mktemp("spec")
    tgt = Runner(_synth(d, "t.gguf", 3, 14.0), n_ctx=64, n_threads=1, backend="reference")
    drf = Runner(_synth(d, "d.gguf", 3, 9.0), n_ctx=64, n_threads=1, backend="reference")
    return tgt, drf


def test_draft_vocabulary_is_checked(tmp_path, synth_pair):
    from edgerun.runtime.runner import Runner

    tgt, _ = synth_pair
    other = Runner(_synth(tmp_path, "o.gguf", 3, 9.0, vocab=320), n_ctx=64, n_threads=1, backend="reference")
    with pytest.raises(sp.SpeculativeError, match="vocabulary of 320 tokens"):
        sp.check_vocab(tgt, other, "t.gguf", "o.gguf")
    with pytest.raises(sp.SpeculativeError, match="the model itself"):
        sp.load_draft(str(tgt.path), tgt)


def _spec(tgt, drf, k: int, lookup: bool = False) -> sp.Speculator:
    cfg = sp.SpecConfig(lookup=lookup, draft_model=None if lookup else "synthetic", draft_max=k,
                        adaptive=False)
    return sp.Speculator(cfg, tgt, None if lookup else sp.DraftModel(drf))


@pytest.mark.parametrize("lookup", [False, True], ids=["draft", "lookup"])
def test_greedy_synthetic_same_tokens(synth_pair, lookup):
    from edgerun.generate import generate

    tgt, drf = synth_pair
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    prompt = [1, 17, 40, 17, 40, 99, 17, 40]
    plain = generate(tgt, prompt, params)
    for k in (1, 3, 6):
        res = generate(tgt, prompt, params, _spec(tgt, drf, k, lookup))
        assert res.tokens == plain.tokens, f"k={k}"
        assert res.spec is not None and res.spec.tokens == len(res.tokens)
        assert res.spec.steps < len(res.tokens) or res.spec.proposed == 0 or res.spec.accepted == 0


def test_draft_greedy_accepts_its_own_copy(synth_pair):
    """A draft identical to the target proposes exactly what the target picks: all accepted."""
    from edgerun.generate import generate

    tgt, _ = synth_pair
    from edgerun.runtime.runner import Runner

    twin = Runner(tgt.path, n_ctx=64, n_threads=1, backend="reference")
    params = SamplingParams(temperature=0.0, max_tokens=21, ignore_eos=True)
    res = generate(tgt, [1, 5, 9], params, _spec(tgt, twin, 4))
    assert res.tokens == generate(tgt, [1, 5, 9], params).tokens
    assert res.spec is not None and res.spec.accepted == res.spec.proposed > 0
    assert res.spec.steps == 5  # first token, then 4 steps of 4 proposals + 1 bonus


def _exact_joint(tgt, prompt: list[int], params: SamplingParams, n: int) -> dict:
    """Exact probability of every n-token continuation under the target's sampling distribution."""
    from edgerun.generate import prefill

    out: dict = {}

    def rec(prefix: list[int], prob: float) -> None:
        if len(prefix) == len(prompt) + n:
            out[tuple(prefix[len(prompt):])] = prob
            return
        lg = prefill(tgt, prefix)
        ids, pr = sp.sampling_dist(params, lg, prefix)
        for t, p in zip(ids, pr, strict=True):
            rec(prefix + [int(t)], prob * float(p))

    rec(list(prompt), 1.0)
    return out


@pytest.mark.slow
def test_distribution_synthetic_draft(synth_pair, monkeypatch):
    """Temperature 1, top-k 3: the joint distribution of three generated tokens (the 2nd and 3rd
    come from one speculative step of 2 draft proposals) matches the exact target distribution
    by a chi-square test, and the same test fails with a broken acceptance rule."""
    from edgerun.generate import step_tokens

    tgt, drf = synth_pair
    prompt = [1, 30, 31, 32]
    base = dict(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, max_tokens=3, ignore_eos=True)
    expected = _exact_joint(tgt, prompt, SamplingParams(**base), 3)
    spec = _spec(tgt, drf, 2)

    def sample(n: int) -> tuple[dict, int, int]:
        counts: dict = {}
        proposed = accepted = 0
        for i in range(n):
            st = spec.new_state(i)
            toks = tuple(step_tokens(tgt, prompt, SamplingParams(**base, seed=i), None, spec, st))
            counts[toks] = counts.get(toks, 0) + 1
            proposed += st.proposed
            accepted += st.accepted
        return counts, proposed, accepted

    counts, proposed, accepted = sample(3000)
    # the test only means something if the draft is sometimes right and sometimes wrong
    assert 0.2 < accepted / proposed < 0.9, accepted / proposed
    _, df, pval = chi2_test(counts, expected)
    assert pval > 1e-3, f"speculative output is not the target distribution (p = {pval:.2e}, df {df})"
    monkeypatch.setattr(sp, "residual", lambda p, q: p)
    counts_bad, _, _ = sample(3000)
    _, _, pval_bad = chi2_test(counts_bad, expected)
    assert pval_bad < 1e-3, f"a broken acceptance rule went unnoticed (p = {pval_bad:.2e})"


def test_step_costs_from_measurements():
    c = sp.StepCosts(draft_guess=0.4)
    assert c.step(0) == 1.0 and c.step(2) == pytest.approx(1 + 2 * sp.ROW_COST + 0.8)  # guesses
    c.note_target(1, 0.100)
    c.note_target(5, 0.140)  # 4 more rows: +40%
    assert c.rows(5) == pytest.approx(1.4)
    assert c.rows(3) == pytest.approx(1.2)  # slope of the nearest measured count
    c.note_draft(4, 0.080)  # 20 ms a draft token = 0.2 of a step
    assert c.step(4) == pytest.approx(1.4 + 4 * 0.2)
    # a costly verification row makes k smaller than a cheap one
    cheap, dear = sp.StepCosts(), sp.StepCosts()
    for costs, t9 in ((cheap, 0.11), (dear, 0.5)):
        costs.note_target(1, 0.1)
        costs.note_target(9, t9)
    assert sp.best_k(0.8, 15, cost=cheap.step) > sp.best_k(0.8, 15, cost=dear.step)


def test_batch_limit_turns_speculation_down_as_the_batch_grows():
    s = sp.Speculator(sp.SpecConfig(lookup=True), target=type("R", (), {"path": __file__})())
    assert s.batch_limit(0, 1) == 15
    assert s.batch_limit(0, 4) == 3  # 4 x (1 + 3) = 16 rows
    assert s.batch_limit(0, 8) == 1
    assert s.batch_limit(0, 16) == 0
    assert s.batch_limit(12, 2) == 1  # a prefill chunk in the step leaves fewer rows
    assert s.batch_limit(300, 1) == 0


def test_kv_trim_gives_back_rejected_blocks():
    from edgerun.serving.block_pool import KVCacheManager
    from edgerun.serving.scheduler import Sequence

    kv = KVCacheManager(num_blocks=8, block_size=4)
    seq = Sequence(prompt_ids=list(range(6)), max_tokens=20)
    assert kv.allocate_slots(seq, 6) is not None
    seq.num_computed_tokens = 6
    seq.token_ids.append(6)
    assert kv.allocate_slots(seq, 1 + 8) is not None  # the last token and 8 proposals: 15 slots
    assert len(kv.block_table(seq.seq_id)) == 4
    seq.num_computed_tokens = 7 + 2  # two accepted
    seq.token_ids += [7, 8, 9]  # ... and the correction
    assert kv.trim(seq, seq.num_tokens) == 1  # 10 tokens need 3 blocks
    assert len(kv.block_table(seq.seq_id)) == 3 and kv.num_used_blocks == 3
    with pytest.raises(AssertionError):
        kv.trim(seq, 4)  # never below the computed tokens
