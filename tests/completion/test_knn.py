"""Parity of ``jaxforget.completion.knn`` with scikit-surprise's user-based k-NN (rows = users)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget.completion.knn import fit_knn, knn, similarity
from surprise_oracle import predict_matrix, surprise, trainset

TOL = 1e-5
M, N = 15, 60


def problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """~60% observed with row/column offsets, plus the edge cases surprise handles specially:

    * column N-1 observed by nobody (surprise's "unknown item"),
    * rows 13 and 14 share exactly 2 observed columns, rows 12 and 13 exactly 1 (support below
      ``min_support``; a single common column also makes the pearson denominator 0).
    """
    rng = np.random.default_rng(seed)
    Z = rng.normal(0, 0.5, (M, N)) + rng.normal(0, 1, (M, 1)) + rng.normal(0, 1, (1, N))
    mask = rng.random((M, N)) < 0.6
    mask[:, -1] = False
    obs13 = np.flatnonzero(mask[13])
    mask[14] = ~mask[13]
    mask[14, obs13[:2]] = True
    mask[12] = ~mask[13]
    mask[12, obs13[0]] = True
    mask[[12, 14], -1] = False
    assert (mask[13] & mask[14]).sum() == 2 and (mask[12] & mask[13]).sum() == 1
    return Z.astype(np.float32), mask


def surprise_algo(rule, sim, *, k=40, min_k=1, min_support=1, ts=None, Z=None, mask=None):
    cls = surprise.KNNBasic if rule == "basic" else surprise.KNNBaseline
    sim_options = {"name": sim, "user_based": True, "min_support": min_support}
    algo = cls(k=k, min_k=min_k, sim_options=sim_options, verbose=False)
    return algo.fit(ts if ts is not None else trainset(Z, mask))


@pytest.mark.parametrize("min_support", [1, 3])
@pytest.mark.parametrize("kind", ["msd", "cosine", "pearson", "pearson_baseline"])
def test_similarity_matches_surprise(kind, min_support):
    Z, mask = problem()
    want = surprise_algo("basic", kind, min_support=min_support, Z=Z, mask=mask).sim
    got = np.asarray(similarity(Z, mask, kind, min_support=min_support))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    # the low-support pairs hit surprise's special cases
    if min_support == 3 or kind in ("pearson", "pearson_baseline"):
        assert got[12, 13] == 0 and want[12, 13] == 0
    if min_support == 3:
        assert got[13, 14] == 0 and want[13, 14] == 0


@pytest.mark.parametrize(
    "rule, sim, k, min_k, min_support",
    [
        ("basic", "msd", 5, 1, 1),
        ("basic", "pearson_baseline", 5, 4, 2),
        ("basic", "cosine", 5, 3, 1),
        ("baseline", "msd", 5, 4, 20),
        ("baseline", "pearson_baseline", 5, 1, 1),
        ("baseline", "pearson_baseline", 5, 4, 2),
        ("baseline", "pearson", 5, 5, 2),
    ],
)
def test_predictions_match_surprise(rule, sim, k, min_k, min_support):
    Z, mask = problem()
    algo = surprise_algo(rule, sim, k=k, min_k=min_k, min_support=min_support, Z=Z, mask=mask)
    want = predict_matrix(algo, M, N)
    fit = knn(Z, mask, k=k, min_k=min_k, sim=sim, rule=rule, min_support=min_support)
    np.testing.assert_allclose(np.asarray(fit.predict()), want, rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(fit.predict_row(3)), want[3], rtol=0, atol=TOL)
    # the configuration exercises top-k truncation and (for min_k > 1) the not-enough-neighbours path
    # on known columns, not only on the unknown column N-1
    # (an impossible prediction has no "actual_k" detail: count it as 0)
    details = [[algo.predict(i, j).details for j in range(N - 1)] for i in range(M)]
    actual_k = np.array([[d.get("actual_k", 0) for d in row] for row in details])
    assert actual_k.max() == k
    if min_k > 1:
        assert (actual_k < min_k).any()


@pytest.mark.parametrize("sim", ["msd", "pearson"])
def test_fold_in_basic_matches_surprise_with_the_row_appended(sim):
    """rule="basic": a pair's similarity depends on the two rows only, so the new row's predictions
    equal surprise's for it as the last row of the trainset -- except where surprise falls back to the
    global mean, which there includes the new row; the fold-in falls back to the fitted mean."""
    Z, mask = problem()
    k, min_k = 5, 2
    fit = knn(Z[:-1], mask[:-1], k=k, min_k=min_k, sim=sim, rule="basic", min_support=2)
    got = np.asarray(fit.fold_in(Z[-1], mask[-1]))
    algo = surprise_algo("basic", sim, k=k, min_k=min_k, min_support=2, Z=Z, mask=mask)
    preds = [algo.predict(M - 1, j, clip=False) for j in range(N)]
    possible = np.array([not p.details["was_impossible"] for p in preds])
    want = np.array([p.est for p in preds])
    assert possible.sum() > 10 and (~possible).any()
    np.testing.assert_allclose(got[possible], want[possible], rtol=0, atol=TOL)
    np.testing.assert_allclose(got[~possible], float(fit.mu), rtol=0, atol=0)
    # a batch of rows folds in row by row
    batch = np.asarray(fit.fold_in(Z[-2:], mask[-2:]))
    np.testing.assert_allclose(batch[1], got, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batch[0], np.asarray(fit.fold_in(Z[-2], mask[-2])), rtol=0, atol=1e-6)


def test_fold_in_baseline_matches_surprise_given_the_fitted_baselines():
    """rule="baseline", sim="pearson_baseline": surprise trained on the rows plus the new one, but with
    its global mean and baselines replaced by the fitted ones and the new row's closed-form ALS offset
    (and the similarities recomputed from them), predicts the new row exactly as ``fold_in``."""
    Z, mask = problem()
    k, min_k, reg_row = 5, 2, 15.0
    fit = knn(Z[:-1], mask[:-1], k=k, min_k=min_k, sim="pearson_baseline", rule="baseline", min_support=2)
    got = np.asarray(fit.fold_in(Z[-1], mask[-1]))

    mu, b_row, b_col = float(fit.mu), np.asarray(fit.b_row, np.float64), np.asarray(fit.b_col, np.float64)
    w = mask[-1]
    b_new = np.sum(Z[-1][w] - mu - b_col[w]) / (reg_row + w.sum())
    ts = trainset(Z, mask)
    ts._global_mean = mu
    algo = surprise_algo("baseline", "pearson_baseline", k=k, min_k=min_k, min_support=2, ts=ts)
    algo.bu = np.concatenate([b_row, [b_new]])
    algo.bi = b_col.copy()
    algo.bx, algo.by = algo.bu, algo.bi
    algo.sim = algo.compute_similarities()
    want = np.array([algo.predict(M - 1, j, clip=False).est for j in range(N)])
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    assert not np.allclose(got, mu + b_new + b_col, atol=1e-3)  # the neighbour correction is active


@pytest.mark.parametrize("rule, sim", [("basic", "msd"), ("baseline", "pearson_baseline")])
def test_hidden_entries_are_ignored(rule, sim):
    Z, mask = problem()
    opts = dict(k=5, min_k=2, sim=sim, rule=rule, min_support=2)
    ref = fit_knn(jnp.asarray(Z), jnp.asarray(mask), **opts)
    ref_fold = np.asarray(ref.fold_in(Z[0], mask[0]))
    for poison in (np.nan, 1e30):
        Zp = np.where(mask, Z, np.float32(poison)).astype(np.float32)
        fit = fit_knn(jnp.asarray(Zp), jnp.asarray(mask), **opts)
        np.testing.assert_array_equal(np.asarray(fit.predict()), np.asarray(ref.predict()))
        np.testing.assert_array_equal(np.asarray(ref.fold_in(Zp[0], mask[0])), ref_fold)
    # public API: mask=None means "observed where finite"
    Zn = np.where(mask, Z, np.nan).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(knn(Zn, **opts).predict()), np.asarray(ref.predict()))


def test_vmap_over_problems_equals_loop():
    problems = [problem(seed) for seed in range(3)]
    Zs = jnp.asarray(np.stack([p[0] for p in problems]))
    masks = jnp.asarray(np.stack([p[1] for p in problems]))
    opts = dict(k=5, min_k=2, sim="pearson_baseline", rule="baseline", min_support=2)
    batched = jax.vmap(lambda Z, m: fit_knn(Z, m, **opts).predict_row(-1))(Zs, masks)
    looped = np.stack([np.asarray(fit_knn(Z, m, **opts).predict_row(-1)) for Z, m in zip(Zs, masks)])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(sim="jaccard"), "jaccard"),
        (dict(rule="zscore"), "zscore"),
        (dict(k=0), "k"),
        (dict(min_k=0), "min_k"),
        (dict(min_support=-1), "min_support"),
        (dict(baseline_method="sgd"), "sgd"),
    ],
)
def test_bad_input_raises(kwargs, needle):
    Z, mask = problem()
    with pytest.raises(ValueError, match=needle):
        knn(Z, mask, **kwargs)


def test_bad_similarity_kind_raises():
    Z, mask = problem()
    with pytest.raises(ValueError, match="jaccard"):
        similarity(Z, mask, "jaccard")
