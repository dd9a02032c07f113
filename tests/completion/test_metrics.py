import numpy as np
import pytest
from scipy import stats

from jaxforget.completion import classification, precision_at_n, r2, rmse, roc_auc


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(6, 50))
    pred = Z + rng.normal(size=Z.shape)
    pred[0, :10] = np.round(pred[0, :10])  # ties in scores
    mask = rng.random(Z.shape) < 0.7
    return Z.astype(np.float32), pred.astype(np.float32), mask


def test_r2_and_rmse_match_numpy(data):
    Z, pred, mask = data
    z, p = Z[mask], pred[mask]
    expect = 1 - np.mean((z - p) ** 2) / np.mean((z - z.mean()) ** 2)
    np.testing.assert_allclose(float(r2(Z, pred, mask)), expect, rtol=1e-5)
    np.testing.assert_allclose(float(rmse(pred, Z, mask)), np.sqrt(np.mean((z - p) ** 2)), rtol=1e-5)


def test_classification_matches_numpy(data):
    Z, pred, mask = data
    truth, guess = Z[mask] > 0.2, pred[mask] > 0.1
    tp = np.sum(truth & guess)
    out = classification(pred, Z, mask, threshold=0.2, pred_threshold=0.1)
    np.testing.assert_allclose(float(out["precision"]), tp / guess.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(out["recall"]), tp / truth.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(out["f1"]), 2 * tp / (truth.sum() + guess.sum()), rtol=1e-6)


def test_roc_auc_matches_mann_whitney_with_ties(data):
    Z, pred, mask = data
    labels = Z > 0
    s, lab = pred[mask], labels[mask]
    u = stats.mannwhitneyu(s[lab], s[~lab]).statistic
    np.testing.assert_allclose(float(roc_auc(pred, labels, mask)), u / (lab.sum() * (~lab).sum()), rtol=1e-6)
    assert np.isnan(float(roc_auc(pred, np.ones_like(labels), mask)))


def _expected_precision_at_n(pred, Z, mask, n):
    """Oracle: per row, E[|top-n predicted  top-n true|] / n when ties are broken uniformly at random,
    from each entry's probability of being picked (1 above the cut, free slots / tied entries at it)."""
    def inclusion(scores, idx, m):
        v = scores[idx]
        cut = np.sort(v)[::-1][m - 1]
        above, tied = v > cut, v == cut
        return np.where(above, 1.0, np.where(tied, (m - above.sum()) / tied.sum(), 0.0))

    vals = []
    for i in range(Z.shape[0]):
        idx = np.flatnonzero(mask[i])
        if idx.size == 0:
            continue
        m = min(n, idx.size)
        vals.append(np.sum(inclusion(pred[i], idx, m) * inclusion(Z[i], idx, m)) / m)
    return np.mean(vals)


def test_precision_at_n_matches_a_loop(data):
    Z, pred, mask = data
    mask[3, :] = False
    mask[3, :4] = True  # fewer masked entries than n
    n = 7
    # without ties: the overlap of the two top-n sets
    untied = pred.copy()
    untied[0, :10] += np.arange(10, dtype=np.float32) * 1e-3  # row 0 holds rounded (tied) scores
    vals = []
    for i in range(Z.shape[0]):
        idx = np.flatnonzero(mask[i])
        m = min(n, idx.size)
        top_p = set(idx[np.argsort(-untied[i, idx], kind="stable")[:m]])
        top_t = set(idx[np.argsort(-Z[i, idx], kind="stable")[:m]])
        vals.append(len(top_p & top_t) / m)
    np.testing.assert_allclose(float(precision_at_n(untied, Z, mask, n)), np.mean(vals), rtol=1e-6)
    # with ties: the expectation over uniformly random tie-breaking
    np.testing.assert_allclose(float(precision_at_n(pred, Z, mask, n)), _expected_precision_at_n(pred, Z, mask, n),
                               rtol=1e-6)


def test_precision_at_n_of_a_constant_is_chance_and_ties_are_averaged():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(3, 40)).astype(np.float32)
    mask = np.ones_like(Z, bool)
    mask[2, 25:] = False  # 25 entries in row 2
    # a constant ranks nothing: n / (entries of the row), averaged over rows
    expect = np.mean([10 / 40, 10 / 40, 10 / 25])
    np.testing.assert_allclose(float(precision_at_n(np.zeros_like(Z), Z, mask, 10)), expect, rtol=1e-6)
    # Monte Carlo over random tie-breaking agrees with the closed form
    pred = np.round(Z * 2) / 2
    draws = [float(precision_at_n(pred + 1e-4 * rng.random(Z.shape).astype(np.float32), Z, mask, 10))
             for _ in range(400)]
    np.testing.assert_allclose(float(precision_at_n(pred, Z, mask, 10)), np.mean(draws), atol=0.01)


def test_roc_auc_is_exact_beyond_int32_counts():
    # 150k entries, ~90k positives: n_pos * n_neg ~ 5.4e9 > 2^31 (the old int32 product overflowed)
    rng = np.random.default_rng(0)
    n = 150_000
    labels = rng.random(n) < 0.6
    scores = (labels * 0.3 + rng.normal(size=n)).round(2).astype(np.float32)  # many ties
    mask = rng.random(n) < 0.98
    s, lab = scores[mask].astype(np.float64), labels[mask]
    ranks = stats.rankdata(s)  # float64 mid-ranks
    n_pos, n_neg = float(lab.sum()), float((~lab).sum())
    expect = (ranks[lab].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    got = float(roc_auc(scores, labels, mask))
    assert abs(got - expect) < 1e-6, (got, expect)
    assert 0.55 < expect < 0.7
