"""scikit-surprise's ``SVD``: biased matrix factorisation by per-rating SGD, reproduced update for update.

The paper's reference code predicts with ``surprise.SVD(n_factors=5, n_epochs=1000, lr_all=0.005,
reg_all=0, init_std_dev=0.001)``. Its fit is sequential: every epoch visits the observed ratings
user by user (our rows), each user's items (our columns) in insertion order, and updates, from the
error ``err = r - (mu + b_row[u] + b_col[i] + P[u] . Q[i])`` computed before the update::

    b_row[u] += lr (err - reg b_row[u]);   b_col[i] += lr (err - reg b_col[i])
    P[u]     += lr (err Q[i] - reg P[u]);  Q[i]     += lr (err P[u] - reg Q[i])   (old P[u], Q[i])

with ``mu`` the mean of the observed ratings. :func:`fit_svd_sgd` runs exactly these updates in
that order -- the order of ``surprise_oracle.trainset`` and of the reference code's row-major
DataFrame -- as ``lax.scan`` over each row's columns (the row's factors in the carry, the column
factors streamed through), so the row-major visit costs ``M * N`` scan steps per epoch. It differs
from surprise only by float32 arithmetic and by its initial factors, drawn from ``jax.random``
(``seed``); :func:`sgd_from` takes initial factors, e.g. surprise's own draw, to compare
trajectories. It is slow by nature (``n_epochs * M * N`` sequential steps); the vmapped protocol
runs all (seed, test task) problems side by side in each step.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxforget.completion._common import Array, global_mean, zero_hidden
from jaxforget.completion.low_rank import LowRankFit


def sgd_from(Z: Array, mask: Array, P0: Array, Q0: Array, *, n_epochs: int, lr: float = 0.005, reg: float = 0.0,
             biased: bool = True) -> LowRankFit:
    """surprise's SVD SGD from initial factors ``P0 [M, k]``, ``Q0 [N, k]`` (offsets start at 0).

    Jitted per shape; ``n_epochs`` and ``biased`` are static.
    """
    return _sgd(Z, mask, P0, Q0, n_epochs=n_epochs, lr=lr, reg=reg, biased=biased)


@partial(jax.jit, static_argnames=("n_epochs", "biased"))
def _sgd(Z, mask, P0, Q0, *, n_epochs, lr, reg, biased):
    Z0, W = zero_hidden(Z, mask)
    dtype = Z0.dtype
    lr = jnp.asarray(lr, dtype)
    reg = jnp.asarray(reg, dtype)
    mu = global_mean(Z0, W) if biased else jnp.zeros((), dtype)
    on = 1.0 if biased else 0.0  # unbiased: offsets stay 0

    def rating(carry, xs):
        p, bu = carry
        q, bi, z, w = xs
        err = z - (mu + bu + bi + jnp.dot(q, p))
        keep = w > 0  # an unobserved cell is not a rating: nothing moves
        bu_n = jnp.where(keep, bu + on * lr * (err - reg * bu), bu)
        bi_n = jnp.where(keep, bi + on * lr * (err - reg * bi), bi)
        p_n = jnp.where(keep, p + lr * (err * q - reg * p), p)
        q_n = jnp.where(keep, q + lr * (err * p - reg * q), q)
        return (p_n, bu_n), (q_n, bi_n)

    def row(u, params):
        P, Q, b_row, b_col = params
        (p, bu), (Q, b_col) = jax.lax.scan(rating, (P[u], b_row[u]), (Q, b_col, Z0[u], W[u]), unroll=1)
        return P.at[u].set(p), Q, b_row.at[u].set(bu), b_col

    def epoch(_, params):
        return jax.lax.fori_loop(0, Z0.shape[0], row, params)

    init = (P0.astype(dtype), Q0.astype(dtype), jnp.zeros(Z0.shape[0], dtype), jnp.zeros(Z0.shape[1], dtype))
    P, Q, b_row, b_col = jax.lax.fori_loop(0, n_epochs, epoch, init)
    return LowRankFit(mu, b_row, b_col, P, Q, reg, reg, biased=biased)


@partial(jax.jit, static_argnames=("rank", "n_epochs", "biased"))
def fit_svd_sgd(
    Z: Array,
    mask: Array,
    *,
    rank: int = 5,
    n_epochs: int = 1000,
    lr: float = 0.005,
    reg: float = 0.0,
    init_std: float = 0.001,
    biased: bool = True,
    seed: int | Array = 0,
) -> LowRankFit:
    """The reference code's ``surprise.SVD`` (defaults: its settings), seeded: initial factors are
    ``init_std * N(0, 1)`` from ``jax.random.key(seed)`` (rows first, then columns, as surprise draws
    them from its own generator). Vmappable; a :class:`LowRankFit` whose ``fold_in`` is the
    least-squares solve for a new row (``reg`` = 0), not SGD."""
    kp, kq = jax.random.split(jax.random.key(seed))
    M, N = Z.shape
    dtype = jnp.result_type(Z.dtype, jnp.float32)
    P0 = init_std * jax.random.normal(kp, (M, rank), dtype)
    Q0 = init_std * jax.random.normal(kq, (N, rank), dtype)
    return _sgd(Z, mask, P0, Q0, n_epochs=n_epochs, lr=lr, reg=reg, biased=biased)
