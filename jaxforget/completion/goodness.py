"""Goodness of fit of simple models of a forgetting matrix (the paper's first analysis)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import jax.numpy as jnp

from jaxforget.completion._common import prepare
from jaxforget.completion.additive import col_mean_fit, exact_additive, fit_additive, row_mean_fit
from jaxforget.completion.low_rank import LowRankFit, fit_low_rank, fit_truncated_svd
from jaxforget.completion.metrics import r2


LOW_RANK_REG = 1e-3
"""Ridge of the masked rank-k fits of the goodness-of-fit analysis (only used when Z has hidden entries)."""
LOW_RANK_ITERS = 100
"""ALS sweeps of those fits."""


def rank_fit(Z: Any, mask: Any | None = None, *, rank: int, reg: float = LOW_RANK_REG, n_iters: int = LOW_RANK_ITERS,
             seed: int = 0) -> LowRankFit:
    """The uncentred rank-``rank`` fit of the goodness-of-fit analysis: the truncated SVD when ``Z`` is
    fully observed, masked ALS with a small ridge otherwise."""
    Z0, mask = prepare(Z, mask)
    if not 1 <= rank <= min(Z0.shape):
        raise ValueError(f"rank must be in [1, {min(Z0.shape)}] for Z with shape {tuple(Z0.shape)}; got {rank}")
    if bool(jnp.all(mask)):
        return fit_truncated_svd(Z0, rank=rank)
    return fit_low_rank(Z0, mask, rank=rank, biased=False, reg=reg, reg_bias=0.0, n_iters=n_iters, seed=seed)


def fit_table(
    Z: Any,
    mask: Any | None = None,
    *,
    ranks: Sequence[int] | None = None,
    reg_row: float = 15.0,
    reg_col: float = 10.0,
    additive_epochs: int = 100,
    low_rank_reg: float = LOW_RANK_REG,
    low_rank_iters: int = LOW_RANK_ITERS,
    seed: int = 0,
) -> dict[str, float]:
    """R^2 over the observed entries of: row means, column means, two additive models, the
    multiplicative model, and rank-k models for each k in ``ranks``.

    The two additive fits of ``mu + a_i + b_j``: ``additive`` is the paper's ridge ALS (``reg_row``,
    ``reg_col``, ``additive_epochs`` sweeps; the reference's lambda_task = 15, lambda_ex = 10), which
    shrinks the offsets and so understates the model when M is small; ``additive_exact`` is the
    unregularised least-squares fit (:func:`~jaxforget.completion.additive.exact_additive`: row and
    column means when fully observed), the most any additive model explains.
    Fully observed matrices use the truncated SVD of the uncentred matrix (so ``multiplicative ==
    rank_1``); otherwise masked uncentred rank-k ALS with a small ridge (``low_rank_reg``).
    Keys: ``row_mean``, ``col_mean``, ``additive``, ``additive_exact``, ``multiplicative``, ``rank_<k>``.
    ``ranks`` defaults to 1..5, fewer when Z has fewer than 5 rows or columns; a rank given explicitly
    beyond them is an error.
    """
    Z0, mask = prepare(Z, mask)
    if ranks is None:
        ranks = range(1, min(5, *Z0.shape) + 1)
    bad = [k for k in ranks if not 1 <= k <= min(Z0.shape)]
    if bad:
        raise ValueError(f"ranks {bad} out of range [1, {min(Z0.shape)}] for Z with shape {Z0.shape}")

    def fitted(k: int):
        return rank_fit(Z0, mask, rank=k, reg=low_rank_reg, n_iters=low_rank_iters, seed=seed).predict()

    table = {
        "row_mean": r2(Z0, row_mean_fit(Z0, mask), mask),
        "col_mean": r2(Z0, col_mean_fit(Z0, mask), mask),
        "additive": r2(Z0, fit_additive(Z0, mask, reg_row=reg_row, reg_col=reg_col,
                                        n_epochs=additive_epochs).predict(), mask),
        "additive_exact": r2(Z0, exact_additive(Z0, mask).predict(), mask),
        "multiplicative": r2(Z0, fitted(1), mask),
    }
    for k in ranks:
        table[f"rank_{k}"] = table["multiplicative"] if k == 1 else r2(Z0, fitted(k), mask)
    return {name: float(v) for name, v in table.items()}


def sampled_rank_r2(Z: Any, mask: Any, ranks: Sequence[int] = (1, 2, 3, 4, 5)) -> dict[str, float]:
    """The R² table's rank-k rows of the *whole* matrix (what :func:`fit_table` gives when every entry is
    measured), estimated from a sample of its entries (``collect --eval.budget``).

    Fitting rank-k models to a sparse sample and scoring them on it overfits (with a tenth of the entries,
    rank 5 fits noise); instead this uses that the truncated SVD's residual is the tail of the spectrum:
    R²_k = 1 - (tr G - Σ_{i≤k} λ_i(G)) / TSS with G = Z Zᵀ / N, an M × M matrix of means over columns. Its
    diagonal, G_aa, is the mean of Z_aj² over row a's measured columns; off the diagonal G_ab = ρ_ab √(G_aa
    G_bb) with ρ_ab the uncentred correlation of rows a and b over the columns both measured (a ratio
    estimate: a sample of shared columns that happens to hold large entries inflates both the products and
    the squares, and cancels); TSS / N is the mean squared deviation of the measured entries. The samples
    must be uniform, or stratified with equal probabilities (collect's anchors and random shares; not the
    columns active selection chose, which the caller leaves out). On a fully measured matrix it equals
    fit_table's rank_k (float rounding aside). Its error is sampling error: with a tenth of the 85 x
    10,000 built-in world's entries, at most 0.019 over six seeds (docs/collect.md, "Budget")."""
    Z = np.asarray(Z, np.float64)
    W = np.asarray(mask, bool) & np.isfinite(Z)
    X = np.where(W, Z, 0.0)
    Wf = W.astype(np.float64)
    if ((Wf @ Wf.T) == 0).any():
        raise ValueError("sampled_rank_r2: some pairs of rows share no measured column (give the rows anchors)")
    sq = (X**2) @ Wf.T  # sq[a, b]: sum of Z_aj^2 over the columns a and b both measured
    rho = (X @ X.T) / np.sqrt(np.maximum(sq * sq.T, 1e-300))
    d = (X**2).sum(1) / Wf.sum(1)
    G = rho * np.sqrt(np.outer(d, d))
    np.fill_diagonal(G, d)
    eig = np.linalg.eigvalsh(G)[::-1]
    mean = X.sum() / Wf.sum()
    tss = float(np.sum(Wf * (X - mean) ** 2) / Wf.sum()) * Z.shape[0]
    return {f"rank_{k}": float(1.0 - (np.trace(G) - eig[:k].sum()) / tss) for k in ranks}
