import numpy as np
import pytest
from scipy import optimize

from jaxforget.completion import logistic_mf, roc_auc


def _binary(seed=0, M=30, N=120, rank=2):
    rng = np.random.default_rng(seed)
    logits = 4.0 * rng.normal(size=(M, rank)) @ rng.normal(size=(rank, N)) / np.sqrt(rank) - 0.5
    Y = (rng.random((M, N)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return Y, logits, rng


def test_logistic_mf_predicts_hidden_entries():
    Y, logits, rng = _binary()
    mask = rng.random(Y.shape) < 0.7
    fit = logistic_mf(Y, mask, rank=2, optimizer="adam", lr=0.05, n_iters=500, reg=1.0, init_std=0.1)
    auc = float(roc_auc(fit.predict(), Y > 0.5, ~mask))
    oracle = float(roc_auc(logits, Y > 0.5, ~mask))
    assert auc > 0.75 and auc > oracle - 0.1, (auc, oracle)
    p = np.asarray(fit.predict_proba())
    assert p.min() >= 0 and p.max() <= 1


def test_reference_optimiser_lowers_the_loss():
    Y, _, rng = _binary(1, M=20, N=60)
    mask = rng.random(Y.shape) < 0.8

    def loss(fit):
        x = np.asarray(fit.predict())
        nll = np.logaddexp(0, x) - Y * x
        return nll[mask].sum() + 0.05 * (np.sum(np.asarray(fit.P) ** 2) + np.sum(np.asarray(fit.Q) ** 2))

    short = logistic_mf(Y, mask, rank=3, n_iters=10, init_std=0.1)
    long = logistic_mf(Y, mask, rank=3, n_iters=2000, init_std=0.1)
    assert loss(long) < loss(short) - 10


def test_logistic_fold_in_is_the_penalised_mle():
    Y, _, rng = _binary(2, M=20, N=80)
    mask = rng.random(Y.shape) < 0.8
    fit = logistic_mf(Y[:-1], mask[:-1], rank=2, optimizer="adam", lr=0.05, n_iters=300, reg=1.0, init_std=0.1)
    y, m = Y[-1], mask[-1]
    F = np.concatenate([np.asarray(fit.Q), np.ones((Y.shape[1], 1))], axis=1)
    off = float(fit.mu) + np.asarray(fit.b_col)
    reg = np.array([1.0, 1.0, 0.1])

    def f(x):
        t = off + F @ x
        return np.sum(m * (np.logaddexp(0, t) - y * t)) + 0.5 * np.sum(reg * x**2)

    x = optimize.minimize(f, np.zeros(3), method="BFGS", options=dict(gtol=1e-8)).x
    np.testing.assert_allclose(np.asarray(fit.fold_in(y, m)), off + F @ x, atol=1e-3)


def test_logistic_rejects_non_binary():
    with pytest.raises(ValueError, match="binary"):
        logistic_mf(np.full((3, 4), 0.5))
    with pytest.raises(ValueError, match="unknown logistic_mf optimizer"):
        logistic_mf(np.ones((3, 4)), optimizer="lbfgs")
