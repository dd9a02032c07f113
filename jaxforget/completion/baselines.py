"""Trivial predictors every prediction table is scored against, on the same hidden entries.

A method is only worth its cost where it beats all of these. On a default run's matrix (README,
predict section) 77% of the hidden entries are positive, so "everything is forgotten" has F1 0.87,
above every method, and the mean of the row's own k revealed entries has RMSE 0.053, below the
additive model's (0.061) and KNN's (0.059). Predictions, for ``S`` seeds and ``T`` test rows:

* ``zero``: 0 everywhere.
* ``train_mean``: the mean of all observed entries of the train rows (one constant).
* ``revealed_mean``: the mean of the test row's revealed entries (no other task used); a row with no
  revealed observed entry (possible with the reference reveal) gets ``train_mean``.
* ``column_mean``: each column's mean over the train rows (``train_mean`` where none is observed).
* ``all_positive``: the classifier that calls every hidden entry forgotten. It has no real-valued
  prediction: only precision, recall and F1 are defined (``ALL_POSITIVE_METRICS``).

Ranking metrics of a constant (AUC, precision@n) are their chance levels: 0.5, and precision@n with
ties broken at random (``metrics.precision_at_n``). ``revealed_mean`` is constant within a row, so its
pooled AUC measures how well the k revealed entries rank the test *tasks* against each other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxforget.completion._common import Array, global_mean, zero_hidden

BASELINES = ("zero", "train_mean", "revealed_mean", "column_mean", "all_positive")
ALL_POSITIVE = "all_positive"
ALL_POSITIVE_METRICS = ("f1", "precision", "recall")


@jax.jit
def baseline_predictions(Z_train: Array, mask_train: Array, z_test: Array, reveal: Array) -> dict[str, Array]:
    """``{name: float[S, T, N]}`` for every baseline but ``all_positive``.

    ``Z_train, mask_train: [M, N]`` the train rows; ``z_test: [T, N]`` the test rows (only revealed
    entries are read); ``reveal: bool[S, T, N]`` the revealed entries per seed.
    """
    Z0, W = zero_hidden(Z_train, mask_train)
    mu = global_mean(Z0, W)
    n_col = jnp.sum(W, axis=0)
    col = jnp.where(n_col > 0, jnp.sum(Z0, axis=0) / jnp.maximum(n_col, 1.0), mu)
    r = reveal.astype(Z0.dtype)
    n_rev = jnp.sum(r, axis=-1)
    rev_sum = jnp.sum(jnp.where(reveal, z_test[None], 0.0), axis=-1)
    row = jnp.where(n_rev > 0, rev_sum / jnp.maximum(n_rev, 1.0), mu)  # [S, T]
    shape = reveal.shape
    return dict(
        zero=jnp.zeros(shape, Z0.dtype),
        train_mean=jnp.full(shape, mu, Z0.dtype),
        revealed_mean=jnp.broadcast_to(row[..., None], shape),
        column_mean=jnp.broadcast_to(col, shape),
    )
