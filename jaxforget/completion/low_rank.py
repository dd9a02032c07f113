"""Low-rank models: masked rank-k factorisation (ALS and gradient descent), truncated SVD,
SoftImpute and the multiplicative (rank-1) model.

Model::

    Zhat[i, j] = mu + b_row[i] + b_col[j] + P[i] . Q[j]        (biased=True)
    Zhat[i, j] = P[i] . Q[j]                                     (biased=False: uncentred, as the
                                                                   paper's multiplicative fit)

Objective of :func:`low_rank` (both solvers)::

    sum_{observed} (Z - Zhat)^2 + reg * (|P|^2 + |Q|^2) + reg_bias * (|b_row|^2 + |b_col|^2)

``mu`` is fixed to the observed mean (as surprise's SVD does). ALS alternates exact ridge solves for
all rows at once and all columns at once (batched ``(k+1) x (k+1)`` systems), so one sweep costs two
``[M, N] x [N, (k+1)^2]`` products.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxforget.completion._common import (
    Array,
    check_choice,
    einsum,
    global_mean,
    mm,
    prepare,
    zero_hidden,
)

METHODS = ("als", "gd")
# Added to every ridge system so that a row/column observed fewer than k times (or reg=0) stays
# solvable; far below any regularisation a user would set.
JITTER = 1e-6


@partial(jax.tree_util.register_dataclass, data_fields=("mu", "b_row", "b_col", "P", "Q", "reg", "reg_bias"),
         meta_fields=("biased", "link"))
@dataclasses.dataclass(frozen=True)
class LowRankFit:
    """``mu + b_row[i] + b_col[j] + P[i] . Q[j]`` (biases are zeros when ``biased`` is False).

    ``link="logit"`` marks a logistic model (:func:`jaxforget.completion.logistic_mf`): then
    :meth:`predict` gives logits and :meth:`predict_proba` probabilities.
    """

    mu: Array  # []
    b_row: Array  # [M]
    b_col: Array  # [N]
    P: Array  # [M, k]
    Q: Array  # [N, k]
    reg: Array  # [] ridge on factors, used by fold_in
    reg_bias: Array  # [] ridge on offsets, used by fold_in
    biased: bool = True
    link: str = "identity"

    @property
    def rank(self) -> int:
        return self.P.shape[-1]

    @property
    def alpha(self) -> Array:
        """Task effect of a rank-1 fit (``P[:, 0]``)."""
        return self.P[:, 0]

    @property
    def beta(self) -> Array:
        """Example effect of a rank-1 fit (``Q[:, 0]``)."""
        return self.Q[:, 0]

    def predict(self) -> Array:
        """The full ``[M, N]`` prediction (logits for ``link="logit"``)."""
        return self.mu + self.b_row[:, None] + self.b_col[None, :] + mm(self.P, self.Q.T)

    def predict_row(self, i: Array | int) -> Array:
        """Prediction ``[N]`` for fitted row ``i``."""
        return self.mu + self.b_row[i] + self.b_col + mm(self.Q, self.P[i])

    def predict_proba(self) -> Array:
        if self.link != "logit":
            raise ValueError("predict_proba is defined for logistic fits (link='logit') only")
        return jax.nn.sigmoid(self.predict())

    def fold_in(self, z: Array, mask: Array) -> Array:
        """Predict new row(s) ``[N]`` / ``[R, N]`` from their observed entries, columns kept fixed.

        Identity link: the exact ridge solve for the row's factors (and offset). Logit link: Newton
        iterations on the row's penalised log-likelihood.
        """
        z = jnp.asarray(z, self.Q.dtype)
        mask = jnp.asarray(mask, bool)
        if z.ndim == 2:
            return jax.vmap(self.fold_in)(z, mask)
        z0, w = zero_hidden(z, mask)
        Qt, reg_vec = _augment(self.Q, self.biased, self.reg, self.reg_bias)
        if self.link == "logit":
            x = _newton_row(Qt, reg_vec, z0, w, self.mu + self.b_col)
        else:
            A = einsum("n,nk,nl->kl", w, Qt, Qt) + jnp.diag(reg_vec + JITTER)
            x = jnp.linalg.solve(A, mm(w * (z0 - self.mu - self.b_col), Qt))
        return self.mu + self.b_col + mm(Qt, x)


def _augment(F: Array, biased: bool, reg: Array, reg_bias: Array) -> tuple[Array, Array]:
    """``[F, 1]`` when biased (the extra coordinate carries the other side's offset) and the ridge
    penalty for each coordinate."""
    k = F.shape[-1]
    reg_vec = jnp.full((k,), reg, F.dtype)
    if not biased:
        return F, reg_vec
    ones = jnp.ones(F.shape[:-1] + (1,), F.dtype)
    return jnp.concatenate([F, ones], axis=-1), jnp.concatenate([reg_vec, jnp.full((1,), reg_bias, F.dtype)])


def _ridge_rows(W: Array, T: Array, F: Array, reg_vec: Array) -> Array:
    """For every row u: argmin_x sum_j W[u,j] (T[u,j] - F[j].x)^2 + sum_d reg_vec[d] x_d^2.

    ``W, T: [M, N]``, ``F: [N, d]`` -> ``[M, d]``. Normal equations as one ``[M, N] x [N, d*d]``
    product, then a batched ``d x d`` solve.
    """
    d = F.shape[-1]
    outer = (F[:, :, None] * F[:, None, :]).reshape(F.shape[0], d * d)
    A = mm(W, outer).reshape(W.shape[0], d, d) + jnp.diag(reg_vec + JITTER)
    rhs = mm(W * T, F)
    return jnp.linalg.solve(A, rhs[..., None])[..., 0]


def _als(Z0, W, rank, biased, reg, reg_bias, n_iters, key, init=None):
    M, N = Z0.shape
    mu = global_mean(Z0, W) if biased else jnp.zeros((), Z0.dtype)
    Q = 0.1 * jax.random.normal(key, (N, rank), Z0.dtype)
    P = jnp.zeros((M, rank), Z0.dtype)
    b_row = jnp.zeros(M, Z0.dtype)
    b_col = jnp.zeros(N, Z0.dtype)
    if init is not None:  # a warm start: the first half-sweep reads only the column side
        Q, b_col = jnp.asarray(init.Q, Z0.dtype), jnp.asarray(init.b_col, Z0.dtype)

    def sweep(_, params):
        P, Q, b_row, b_col = params
        Qt, reg_vec = _augment(Q, biased, reg, reg_bias)
        x = _ridge_rows(W, Z0 - mu - b_col[None, :], Qt, reg_vec)
        P, b_row = (x[:, :rank], x[:, rank]) if biased else (x, b_row)
        Pt, _ = _augment(P, biased, reg, reg_bias)
        y = _ridge_rows(W.T, (Z0 - mu - b_row[:, None]).T, Pt, reg_vec)
        Q, b_col = (y[:, :rank], y[:, rank]) if biased else (y, b_col)
        return P, Q, b_row, b_col

    P, Q, b_row, b_col = jax.lax.fori_loop(0, n_iters, sweep, (P, Q, b_row, b_col))
    return LowRankFit(mu, b_row, b_col, P, Q, jnp.asarray(reg, Z0.dtype), jnp.asarray(reg_bias, Z0.dtype),
                      biased=biased)


def _gd(Z0, W, rank, biased, reg, reg_bias, n_iters, key, lr, init_std):
    M, N = Z0.shape
    mu = global_mean(Z0, W) if biased else jnp.zeros((), Z0.dtype)
    kp, kq = jax.random.split(key)
    params = dict(
        P=init_std * jax.random.normal(kp, (M, rank), Z0.dtype),
        Q=init_std * jax.random.normal(kq, (N, rank), Z0.dtype),
        b_row=jnp.zeros(M, Z0.dtype),
        b_col=jnp.zeros(N, Z0.dtype),
    )
    n_obs = jnp.maximum(jnp.sum(W), 1.0)
    scale = 1.0 if biased else 0.0  # unbiased: offsets stay exactly zero

    def loss(p):
        pred = mu + scale * (p["b_row"][:, None] + p["b_col"][None, :]) + mm(p["P"], p["Q"].T)
        err = (Z0 - pred) * W
        penalty = reg * (jnp.sum(p["P"] ** 2) + jnp.sum(p["Q"] ** 2))
        penalty += reg_bias * (jnp.sum(p["b_row"] ** 2) + jnp.sum(p["b_col"] ** 2))
        return (jnp.sum(err**2) + penalty) / n_obs

    tx = optax.adam(lr)

    def step(_, carry):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    p, _ = jax.lax.fori_loop(0, n_iters, step, (params, tx.init(params)))
    return LowRankFit(mu, scale * p["b_row"], scale * p["b_col"], p["P"], p["Q"], jnp.asarray(reg, Z0.dtype),
                      jnp.asarray(reg_bias, Z0.dtype), biased=biased)


@partial(jax.jit, static_argnames=("rank", "biased", "method", "n_iters"))
def fit_low_rank(
    Z: Array,
    mask: Array,
    *,
    rank: int = 5,
    biased: bool = True,
    method: str = "als",
    reg: float = 0.1,
    reg_bias: float = 0.1,
    n_iters: int = 50,
    lr: float = 0.01,
    init_std: float = 0.1,
    seed: int | Array = 0,
    init: LowRankFit | None = None,
) -> LowRankFit:
    """Jitted core of :func:`low_rank` without host-side validation (vmappable, seed may be traced).

    ``init``: start ALS from this fit's column side (``Q [N, rank]``, ``b_col``) instead of random
    factors, e.g. the previous fit when rows were appended (:class:`jaxforget.completion.Completer`)."""
    Z0, W = zero_hidden(Z, mask)
    key = jax.random.key(seed)
    if method == "als":
        return _als(Z0, W, rank, biased, reg, reg_bias, n_iters, key, init)
    if init is not None:
        raise ValueError("fit_low_rank: init (a warm start) is for method='als' only")
    return _gd(Z0, W, rank, biased, reg, reg_bias, n_iters, key, lr, init_std)


def low_rank(
    Z: Any,
    mask: Any | None = None,
    *,
    rank: int = 5,
    biased: bool = True,
    method: str = "als",
    reg: float = 0.1,
    reg_bias: float = 0.1,
    n_iters: int = 50,
    lr: float = 0.01,
    init_std: float = 0.1,
    seed: int = 0,
) -> LowRankFit:
    """Masked rank-``rank`` factorisation of ``Z`` (see module docstring for the objective).

    Args:
      rank: number of factors (0 gives the additive model with ``biased=True``).
      biased: add ``mu + b_row + b_col`` (surprise's biased SVD) or fit the uncentred matrix.
      method: ``"als"`` (alternating exact ridge solves, ``n_iters`` sweeps) or ``"gd"``
        (full-batch Adam with step ``lr`` on the mean objective, ``n_iters`` steps).
      reg, reg_bias: ridge penalties on the factors and on the offsets.
      init_std: standard deviation of the random initial factors (``gd``; ALS starts from 0.1).
      seed: seed of the initial factors.
    """
    check_choice("low_rank method", method, METHODS)
    if rank < 0:
        raise ValueError(f"rank must be >= 0; got {rank}")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1; got {n_iters}")
    if reg < 0 or reg_bias < 0:
        raise ValueError(f"reg and reg_bias must be >= 0; got {reg}, {reg_bias}")
    Z0, mask = prepare(Z, mask)
    if rank > min(Z0.shape):
        raise ValueError(f"rank {rank} exceeds min(M, N) = {min(Z0.shape)} of Z with shape {Z0.shape}")
    return fit_low_rank(Z0, mask, rank=rank, biased=biased, method=method, reg=reg, reg_bias=reg_bias,
                        n_iters=n_iters, lr=lr, init_std=init_std, seed=seed)


def _svd_fit(U: Array, s: Array, Vt: Array, reg: float = 0.0) -> LowRankFit:
    M, N = U.shape[0], Vt.shape[1]
    dtype = s.dtype
    zero = jnp.zeros((), dtype)
    return LowRankFit(zero, jnp.zeros(M, dtype), jnp.zeros(N, dtype), U * s, Vt.T, jnp.asarray(reg, dtype), zero,
                      biased=False)


@partial(jax.jit, static_argnames=("rank",))
def fit_truncated_svd(Z: Array, *, rank: int) -> LowRankFit:
    """Jitted core of :func:`truncated_svd`."""
    U, s, Vt = jnp.linalg.svd(Z, full_matrices=False)
    return _svd_fit(U[:, :rank], s[:rank], Vt[:rank])


def truncated_svd(Z: Any, rank: int, mask: Any | None = None) -> LowRankFit:
    """Best rank-``rank`` approximation of a fully observed ``Z`` (Eckart-Young), uncentred.

    ``P = U_k * s_k`` and ``Q = V_k``. For partially observed matrices use :func:`low_rank` or
    :func:`soft_impute`.
    """
    Z0, mask = prepare(Z, mask)
    if not bool(jnp.all(mask)):
        raise ValueError(
            f"truncated_svd needs a fully observed matrix; {int(jnp.sum(~mask))} entries are hidden "
            "(use low_rank or soft_impute for partially observed matrices)"
        )
    if not 1 <= rank <= min(Z0.shape):
        raise ValueError(f"rank must be in [1, {min(Z0.shape)}] for Z with shape {Z0.shape}; got {rank}")
    return fit_truncated_svd(Z0, rank=rank)


@partial(jax.jit, static_argnames=("n_iters", "max_rank"))
def fit_soft_impute(Z: Array, mask: Array, *, lam: float, n_iters: int = 100, max_rank: int) -> LowRankFit:
    """Jitted core of :func:`soft_impute`."""
    Z0, W = zero_hidden(Z, mask)
    obs = W.astype(bool)

    def shrink(X):
        U, s, Vt = jnp.linalg.svd(X, full_matrices=False)
        return U, jnp.maximum(s - lam, 0.0), Vt

    def step(_, X):
        U, s, Vt = shrink(jnp.where(obs, Z0, X))
        return mm(U * s, Vt)

    X = jax.lax.fori_loop(0, n_iters, step, jnp.zeros_like(Z0))
    U, s, Vt = shrink(jnp.where(obs, Z0, X))
    return _svd_fit(U[:, :max_rank], s[:max_rank], Vt[:max_rank], reg=lam)


def soft_impute(
    Z: Any, mask: Any | None = None, *, lam: float | None = None, n_iters: int = 100, max_rank: int | None = None
) -> LowRankFit:
    """SoftImpute (Mazumder, Hastie & Tibshirani 2010): iterate ``X <- S_lam(P_obs(Z) + P_hidden(X))``
    where ``S_lam`` soft-thresholds the singular values by ``lam`` (nuclear-norm shrinkage).

    ``lam=None`` uses 5% of the largest singular value of the zero-filled matrix. The result keeps
    the ``max_rank`` leading components (default: all); components shrunk to zero contribute nothing.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1; got {n_iters}")
    Z0, mask = prepare(Z, mask)
    if lam is None:
        lam = 0.05 * float(jnp.linalg.norm(Z0, ord=2))
    if lam < 0:
        raise ValueError(f"lam must be >= 0; got {lam}")
    max_rank = min(Z0.shape) if max_rank is None else max_rank
    if not 1 <= max_rank <= min(Z0.shape):
        raise ValueError(f"max_rank must be in [1, {min(Z0.shape)}]; got {max_rank}")
    return fit_soft_impute(Z0, mask, lam=lam, n_iters=n_iters, max_rank=max_rank)


def _orient(fit: LowRankFit) -> LowRankFit:
    """Rank-1 sign convention: the example effect beta has a non-negative sum (alpha.beta unchanged)."""
    sign = jnp.where(jnp.sum(fit.Q[:, 0]) < 0, -1.0, 1.0).astype(fit.Q.dtype)
    return dataclasses.replace(fit, P=fit.P * sign, Q=fit.Q * sign)


def multiplicative(Z: Any, mask: Any | None = None, *, additive_terms: bool = False, **low_rank_options) -> LowRankFit:
    """The multiplicative model ``Z[i, j] ~ alpha[i] * beta[j]`` (``fit.alpha``, ``fit.beta``).

    Fully observed and without additive terms it is the rank-1 truncated SVD of the uncentred
    matrix, as in the paper; otherwise a masked rank-1 :func:`low_rank` fit
    (``additive_terms=True`` adds ``mu + b_row + b_col``). The sign is fixed so that ``sum(beta) >= 0``.
    """
    Z0, mask = prepare(Z, mask)
    if not additive_terms and not low_rank_options and bool(jnp.all(mask)):
        return _orient(fit_truncated_svd(Z0, rank=1))
    return _orient(low_rank(Z0, mask, rank=1, biased=additive_terms, **low_rank_options))


def _newton_row(F: Array, reg_vec: Array, y: Array, w: Array, offset: Array, n_steps: int = 25) -> Array:
    """argmin_x sum_j w_j BCE(y_j, offset_j + F_j.x) + 1/2 sum_d reg_vec_d x_d^2 by Newton's method."""

    def step(x, _):
        p = jax.nn.sigmoid(offset + mm(F, x))
        g = mm(w * (p - y), F) + reg_vec * x
        H = einsum("n,nk,nl->kl", w * p * (1 - p), F, F) + jnp.diag(reg_vec + JITTER)
        return x - jnp.linalg.solve(H, g), None

    x, _ = jax.lax.scan(step, jnp.zeros(F.shape[-1], F.dtype), None, length=n_steps)
    return x
