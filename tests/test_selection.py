"""Selection rules (jaxforget.selection) and the paired power calculations (jaxforget.analysis)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxforget.analysis import paired_power, paired_sample_size, paired_test
from jaxforget.selection import RULES, allocate, sample_without_replacement, select, standardize, stratified_sample

# ------------------------------------------------------------------------------------------------
# rules


def test_softmax_rule_is_the_paper_sampler_bit_for_bit():
    scores = np.random.default_rng(0).normal(size=40)
    a = select("softmax", scores, 9, temperature=0.3, rng=np.random.default_rng(5))
    b = sample_without_replacement(scores, 9, temperature=0.3, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert RULES == ("softmax", "zsoftmax", "stratified")


def test_zsoftmax_is_invariant_to_scale_and_shift_and_softmax_is_not():
    scores = np.random.default_rng(1).normal(size=200) * 0.01
    for seed in range(20):
        base = select("zsoftmax", scores, 30, temperature=0.5, rng=np.random.default_rng(seed))
        for scale, shift in ((1000.0, 0.0), (1.0, 7.5), (1000.0, -123.0), (1e-3, 1e3)):
            other = select("zsoftmax", scores * scale + shift, 30, temperature=0.5, rng=np.random.default_rng(seed))
            np.testing.assert_array_equal(base, other)
    # the paper's rule depends on the scale: scaled up, the same noise gives another, greedy draw
    soft = select("softmax", scores, 30, temperature=0.5, rng=np.random.default_rng(0))
    sharp = select("softmax", scores * 1e5, 30, temperature=0.5, rng=np.random.default_rng(0))
    assert not np.array_equal(soft, sharp)
    assert set(sharp.tolist()) == set(np.argsort(-scores)[:30].tolist())
    # zsoftmax = softmax of the standardised scores
    z = (scores - scores.mean()) / scores.std()
    np.testing.assert_allclose(standardize(scores), z, rtol=1e-12)
    np.testing.assert_array_equal(
        select("zsoftmax", scores, 30, temperature=0.5, rng=np.random.default_rng(3)),
        sample_without_replacement(z, 30, temperature=0.5, rng=np.random.default_rng(3)))
    # constant scores: uniform, whatever the constant
    np.testing.assert_array_equal(standardize(np.full(5, 3.7)), np.zeros(5))
    np.testing.assert_array_equal(
        select("zsoftmax", np.full(50, 3.7), 10, temperature=0.1, rng=np.random.default_rng(2)),
        select("zsoftmax", np.zeros(50), 10, temperature=0.1, rng=np.random.default_rng(2)))


def test_allocate_is_proportional_by_largest_remainder_and_capped():
    np.testing.assert_array_equal(allocate([10, 20, 30], 6), [1, 2, 3])
    np.testing.assert_array_equal(allocate([10, 20, 30], 7), [1, 2, 4])  # remainders .167 .333 .5
    np.testing.assert_array_equal(allocate([1, 1, 1], 2), [1, 1, 0])  # ties: the lower stratum first
    np.testing.assert_array_equal(allocate([3, 0, 5], 8), [3, 0, 5])
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 12, rng.integers(1, 7))
        n = int(rng.integers(0, sizes.sum() + 1))
        q = allocate(sizes, n)
        assert q.sum() == n and (q >= 0).all() and (q <= sizes).all()
        assert np.abs(q - n * sizes / max(sizes.sum(), 1)).max() < 1 + 1e-9
    with pytest.raises(ValueError, match="cannot draw 9 distinct items from 8"):
        allocate([3, 5], 9)
    with pytest.raises(ValueError, match="counts >= 0"):
        allocate([3.0, 5.0], 2)


def test_stratified_draws_are_distinct_follow_the_allocation_and_are_seeded():
    rng = np.random.default_rng(7)
    strata = np.repeat([4, 0, 9], [30, 12, 8])[rng.permutation(50)]
    scores = rng.normal(size=50) + 10 * (strata == 9)  # stratum 9 scores highest: softmax would take it all
    for n in (0, 1, 7, 20, 50):
        idx = select("stratified", scores, n, temperature=0.2, rng=np.random.default_rng(n), strata=strata)
        assert len(set(idx.tolist())) == idx.size == n
        quota = dict(zip([0, 4, 9], allocate(np.array([12, 30, 8]), n).tolist()))
        for label, q in quota.items():
            assert int(np.sum(strata[idx] == label)) == q
        # returned by stratum, ascending label: each block holds only its stratum's members
        blocks = np.split(idx, np.cumsum([quota[0], quota[4]]))
        for label, block in zip((0, 4, 9), blocks):
            assert (strata[block] == label).all()
    a = select("stratified", scores, 20, temperature=0.2, rng=np.random.default_rng(1), strata=strata)
    b = select("stratified", scores, 20, temperature=0.2, rng=np.random.default_rng(1), strata=strata)
    c = select("stratified", scores, 20, temperature=0.2, rng=np.random.default_rng(2), strata=strata)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # within a stratum the score chooses: at a low temperature, the stratum's top scores
    greedy = stratified_sample(scores, strata, 20, temperature=1e-6, rng=np.random.default_rng(0))
    for label in (0, 4, 9):
        members = np.flatnonzero(strata == label)
        mine = greedy[strata[greedy] == label]
        assert set(mine.tolist()) == set(members[np.argsort(-scores[members])[:mine.size]].tolist())
    # a stratum's scores are standardised within it: the shift of stratum 9 changes nothing
    shifted = select("stratified", scores - 10 * (strata == 9), 20, temperature=0.2, rng=np.random.default_rng(1),
                     strata=strata)
    np.testing.assert_array_equal(a, shifted)


def test_select_errors_are_clear():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown selection rule 'greedy'; expected one of softmax, zsoftmax, "
                                         "stratified"):
        select("greedy", np.zeros(3), 1, temperature=0.1, rng=rng)
    with pytest.raises(ValueError, match="the stratified rule needs strata"):
        select("stratified", np.zeros(3), 1, temperature=0.1, rng=rng)
    with pytest.raises(ValueError, match=r"strata must be integer labels, one per score: got int64 shape \(2,\)"):
        select("stratified", np.zeros(3), 1, temperature=0.1, rng=rng, strata=np.array([0, 1]))
    with pytest.raises(ValueError, match="strata must be integer labels"):
        select("stratified", np.zeros(2), 1, temperature=0.1, rng=rng, strata=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"scores must be one-dimensional, got shape \(2, 2\)"):
        select("zsoftmax", np.zeros((2, 2)), 1, temperature=0.1, rng=rng)
    with pytest.raises(ValueError, match=r"non-finite entries \(first at 1\)"):
        select("zsoftmax", np.array([0.0, np.inf]), 1, temperature=0.1, rng=rng)
    with pytest.raises(ValueError, match="cannot draw 4 distinct items from 3"):
        select("stratified", np.zeros(3), 4, temperature=0.1, rng=rng, strata=np.zeros(3, int))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        select("softmax", np.zeros(3), 1, temperature=0.0, rng=rng)


# ------------------------------------------------------------------------------------------------
# power and intervals


def test_paired_power_and_sample_size_match_statsmodels():
    power = pytest.importorskip("statsmodels.stats.power")
    tp = power.TTestPower()
    for d in (0.1, 0.3, 0.5, 0.8, -0.6, 1.5):
        for n in (2, 3, 8, 20, 60):
            ref = tp.power(effect_size=d, nobs=n, alpha=0.05)
            if np.isfinite(ref):  # statsmodels' lower tail is NaN far out (d 1.5, n 60); ours is not
                assert paired_power(n, d * 0.02, 0.02) == pytest.approx(ref, abs=1e-10)
    assert tp.solve_power(effect_size=0.5, power=0.8, alpha=0.05) == pytest.approx(33.367, abs=1e-3)
    for d in (0.2, 0.5, 1.0, -0.35):
        assert paired_sample_size(d, 1.0) == math.ceil(tp.solve_power(effect_size=abs(d), power=0.8, alpha=0.05))


def test_paired_sample_size_textbook_value_and_edge_cases():
    # d = 0.5, two-sided alpha 0.05, power 0.8, one-sample / paired t-test: 34 pairs (Cohen 1988)
    assert paired_sample_size(0.5, 1.0) == 34
    assert paired_sample_size(-0.01, 0.02) == 34  # only the standardised difference matters, not its sign
    assert paired_power(34, 0.5, 1.0) >= 0.8 > paired_power(33, 0.5, 1.0)
    assert paired_power(10, 0.0, 1.0) == pytest.approx(0.05)  # no difference: the level
    assert paired_sample_size(0.0, 1.0) == math.inf  # nothing to detect
    assert paired_sample_size(1e-9, 1.0) == math.inf  # beyond max_n
    assert paired_sample_size(0.3, 0.0) == 2  # every pair differs by the same amount
    assert paired_sample_size(float("nan"), 1.0) is None and paired_sample_size(0.3, float("nan")) is None
    assert np.isnan(paired_power(1, 0.5, 1.0))
    with pytest.raises(ValueError, match="0 < alpha < power < 1"):
        paired_sample_size(0.5, 1.0, power=0.01)


def test_paired_test_interval_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(3)
    x, y = rng.normal(0.2, 1, 11), rng.normal(0, 1, 11)
    res = paired_test(x, y)
    d = x - y
    low, high = stats.t.interval(0.95, 10, loc=d.mean(), scale=stats.sem(d))
    assert res.ci_low == pytest.approx(low, abs=1e-12) and res.ci_high == pytest.approx(high, abs=1e-12)
    assert res.sd_diff == pytest.approx(d.std(ddof=1))
    assert paired_test(x, y, confidence=0.5).ci_high < high
    one = paired_test([1.0], [0.0]).to_json()
    assert one["ci_low"] is None and one["sd_diff"] is None
