import numpy as np
import pytest

from jaxforget.completion import (
    additive, fit_table, low_rank, multiplicative, planted_matrix, r2, soft_impute, truncated_svd,
)
from surprise_oracle import surprise, trainset


def _planted(seed=0, M=30, N=200, rank=3, noise=0.01):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(M, rank)) @ rng.normal(size=(rank, N))
    return truth, truth + noise * rng.normal(size=truth.shape), rng


@pytest.mark.parametrize("method,kw", [("als", dict(n_iters=100)), ("gd", dict(n_iters=3000, lr=0.01))])
@pytest.mark.parametrize("biased", [False, True])
def test_planted_low_rank_is_recovered_from_half_the_entries(method, kw, biased):
    truth, Z, rng = _planted()
    mask = rng.random(Z.shape) < 0.5
    fit = low_rank(Z, mask, rank=3, biased=biased, method=method, reg=1e-3, reg_bias=1e-3, **kw)
    hidden = ~mask
    assert float(r2(truth, fit.predict(), hidden)) > 0.995


def test_truncated_svd_is_eckart_young():
    _, Z, _ = _planted(1, noise=0.3)
    U, s, Vt = np.linalg.svd(Z.astype(np.float32), full_matrices=False)
    for k in (1, 2, 4):
        fit = truncated_svd(Z, k)
        np.testing.assert_allclose(np.asarray(fit.predict()), (U[:, :k] * s[:k]) @ Vt[:k], atol=2e-4)
    with pytest.raises(ValueError, match="fully observed"):
        truncated_svd(np.where(np.eye(30, 200) > 0, np.nan, Z), 2)


def test_multiplicative_beats_additive_on_a_multiplicative_matrix():
    rng = np.random.default_rng(2)
    Z = np.outer(rng.lognormal(0, 0.5, 40), rng.gamma(2.0, 0.1, 500)) + 0.001 * rng.normal(size=(40, 500))
    table = fit_table(Z)
    assert table["multiplicative"] > 0.999
    assert table["multiplicative"] > table["additive"] + 0.01
    fit = multiplicative(Z)
    assert float(np.sum(fit.beta)) >= 0
    np.testing.assert_allclose(np.asarray(fit.predict()), np.outer(fit.alpha, fit.beta), rtol=1e-5, atol=1e-6)
    # partially observed: masked rank-1 fit, same model
    mask = rng.random(Z.shape) < 0.6
    masked = multiplicative(np.where(mask, Z, np.nan), mask, reg=1e-4, n_iters=100)
    assert float(r2(Z, masked.predict())) > 0.999


def test_fit_table_ranks_are_monotone_and_match_svd():
    P = planted_matrix(40, 300, seed=3)
    table = fit_table(P.Z, ranks=(1, 2, 3, 4, 5))
    values = [table[f"rank_{k}"] for k in range(1, 6)]
    assert all(b >= a - 1e-6 for a, b in zip(values, values[1:]))
    U, s, Vt = np.linalg.svd(P.Z, full_matrices=False)
    rec = (U[:, :2] * s[:2]) @ Vt[:2]
    expect = 1 - np.mean((P.Z - rec) ** 2) / np.var(P.Z)
    np.testing.assert_allclose(table["rank_2"], expect, atol=1e-4)
    with_nan = planted_matrix(40, 300, seed=3, nan_fraction=0.05)
    masked = fit_table(with_nan.Z, ranks=(1, 2))
    assert abs(masked["rank_2"] - table["rank_2"]) < 0.05
    with pytest.raises(ValueError, match="ranks"):
        fit_table(P.Z, ranks=(0, 2))


def test_low_rank_training_loss_no_worse_than_surprise_svd():
    """Same data, rank, no regularisation (the paper's MF setting): our fit's training RMSE."""
    truth, Z, rng = _planted(4, M=25, N=80, rank=4, noise=0.1)
    mask = rng.random(Z.shape) < 0.6
    algo = surprise.SVD(n_factors=5, n_epochs=300, lr_all=0.005, reg_all=0.0, init_std_dev=0.1, random_state=0)
    algo.fit(trainset(Z, mask))
    theirs = np.array([[algo.estimate(i, j) for j in range(Z.shape[1])] for i in range(Z.shape[0])])
    ours = np.asarray(low_rank(Z, mask, rank=5, biased=True, reg=0.0, reg_bias=0.0, n_iters=100).predict())
    rmse_theirs = np.sqrt(np.mean((theirs - Z)[mask] ** 2))
    rmse_ours = np.sqrt(np.mean((ours - Z)[mask] ** 2))
    assert rmse_ours <= rmse_theirs, (rmse_ours, rmse_theirs)


def test_soft_impute_matches_a_numpy_implementation():
    truth, Z, rng = _planted(5, M=20, N=60, rank=2, noise=0.05)
    mask = rng.random(Z.shape) < 0.7
    lam = 1.0
    X = np.zeros_like(Z)
    for _ in range(31):  # 30 iterations + the final shrink
        U, s, Vt = np.linalg.svd(np.where(mask, Z, X), full_matrices=False)
        X = (U * np.maximum(s - lam, 0)) @ Vt
    fit = soft_impute(Z, mask, lam=lam, n_iters=30)
    np.testing.assert_allclose(np.asarray(fit.predict()), X, atol=1e-4)
    assert float(r2(truth, fit.predict(), ~mask)) > 0.95


def test_fold_in_solves_the_ridge_problem():
    truth, Z, rng = _planted(6, M=20, N=60, rank=2)
    mask = rng.random(Z.shape) < 0.7
    fit = low_rank(Z[:-1], mask[:-1], rank=2, biased=True, reg=0.5, reg_bias=0.2, n_iters=30)
    z, m = Z[-1], mask[-1]
    Q = np.concatenate([np.asarray(fit.Q), np.ones((Z.shape[1], 1))], axis=1)[m]
    t = (z - float(fit.mu) - np.asarray(fit.b_col))[m]
    x = np.linalg.solve(Q.T @ Q + np.diag([0.5, 0.5, 0.2]), Q.T @ t)
    full_Q = np.concatenate([np.asarray(fit.Q), np.ones((Z.shape[1], 1))], axis=1)
    expect = float(fit.mu) + np.asarray(fit.b_col) + full_Q @ x
    np.testing.assert_allclose(np.asarray(fit.fold_in(z, m)), expect, atol=1e-4)


def test_hidden_entries_never_influence_low_rank_fits():
    truth, Z, rng = _planted(7, M=15, N=40)
    mask = rng.random(Z.shape) < 0.6
    clean = np.asarray(low_rank(Z, mask, rank=2).predict())
    poisoned = np.asarray(low_rank(np.where(mask, Z, 1e30), mask, rank=2).predict())
    np.testing.assert_array_equal(poisoned, clean)
    si = np.asarray(soft_impute(Z, mask, lam=0.5, n_iters=5).predict())
    np.testing.assert_array_equal(np.asarray(soft_impute(np.where(mask, Z, np.nan), mask, lam=0.5, n_iters=5).predict()), si)


def test_low_rank_bad_input():
    _, Z, _ = _planted(8, M=10, N=20)
    with pytest.raises(ValueError, match="rank 11 exceeds"):
        low_rank(Z, rank=11)
    with pytest.raises(ValueError, match="unknown low_rank method 'newton'"):
        low_rank(Z, method="newton")
    with pytest.raises(ValueError, match="reg"):
        low_rank(Z, reg=-1.0)
