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


def test_precision_at_n_matches_a_loop(data):
    Z, pred, mask = data
    mask[3, :] = False
    mask[3, :4] = True  # fewer masked entries than n
    n = 7
    vals = []
    for i in range(Z.shape[0]):
        idx = np.flatnonzero(mask[i])
        m = min(n, idx.size)
        top_p = set(idx[np.argsort(-pred[i, idx], kind="stable")[:m]])
        top_t = set(idx[np.argsort(-Z[i, idx], kind="stable")[:m]])
        vals.append(len(top_p & top_t) / m)
    np.testing.assert_allclose(float(precision_at_n(pred, Z, mask, n)), np.mean(vals), rtol=1e-6)
