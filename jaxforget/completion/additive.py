"""Additive (baseline) model ``Z[i, j] ~ mu + b_row[i] + b_col[j]`` and the row/column-mean fits.

Objective (both solvers)::

    J = sum_{observed} (Z - mu - b_row[i] - b_col[j])^2 + reg_row * |b_row|^2 + reg_col * |b_col|^2

with ``mu`` fixed to the mean of the observed entries. ``method="als"`` is exact coordinate descent:
each sweep sets ``b_col[j] = sum_i (Z - mu - b_row[i]) / (reg_col + n_j)`` then
``b_row[i] = sum_j (Z - mu - b_col[j]) / (reg_row + n_i)`` -- the same updates, in the same order, as
scikit-surprise's ``BaselineOnly`` with ``bsl_options={'method': 'als'}`` (surprise's users are our
rows, its items our columns: ``reg_u = reg_row``, ``reg_i = reg_col``) and the paper's analysis
(100 sweeps, lambda_ex = reg_col = 10, lambda_task = reg_row = 15). ``method="gd"`` minimises the
same objective with full-batch Adam, the full-batch counterpart of surprise's per-rating SGD.

:func:`exact_additive` is the unregularised least-squares two-way fit (the best any additive model
does, the R^2 table's ``additive_exact``): row and column means when Z is fully observed, otherwise
the normal equations reduced to an ``M x M`` system for the row offsets (the column offsets
eliminated), solved by least squares (min-norm where the observed pattern splits into parts).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxforget.completion._common import Array, check_choice, global_mean, mm, prepare, zero_hidden

METHODS = ("als", "gd")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdditiveFit:
    """``mu + b_row[i] + b_col[j]``. ``reg_row`` is kept for :meth:`fold_in`."""

    mu: Array  # []
    b_row: Array  # [M]
    b_col: Array  # [N]
    reg_row: Array  # []

    def predict(self) -> Array:
        """The full ``[M, N]`` prediction."""
        return self.mu + self.b_row[:, None] + self.b_col[None, :]

    def predict_row(self, i: Array | int) -> Array:
        """Prediction ``[N]`` for fitted row ``i``."""
        return self.mu + self.b_row[i] + self.b_col

    def fold_in(self, z: Array, mask: Array) -> Array:
        """Predict a new row ``[N]`` from its observed entries without refitting the columns.

        The new row's offset is the closed-form ALS row update with the fitted ``b_col``.
        Works on a batch of rows (``z, mask: [R, N]``) too.
        """
        z0, w = zero_hidden(jnp.asarray(z, self.b_col.dtype), jnp.asarray(mask, bool))
        dev = jnp.sum(w * (z0 - self.mu - self.b_col), axis=-1)
        b = dev / (self.reg_row + jnp.sum(w, axis=-1))
        return self.mu + b[..., None] + self.b_col


def _als(Z0: Array, W: Array, reg_row: Array, reg_col: Array, n_epochs: int,
         init: AdditiveFit | None = None) -> AdditiveFit:
    mu = global_mean(Z0, W)
    R = (Z0 - mu) * W  # residual after mu, zero where hidden
    n_row, n_col = jnp.sum(W, axis=1), jnp.sum(W, axis=0)

    def sweep(_, b):
        b_row, _ = b
        b_col = (jnp.sum(R, axis=0) - mm(b_row, W)) / (reg_col + n_col)
        b_row = (jnp.sum(R, axis=1) - mm(W, b_col)) / (reg_row + n_row)
        return b_row, b_col

    start = (jnp.zeros(Z0.shape[0], Z0.dtype), jnp.zeros(Z0.shape[1], Z0.dtype))
    if init is not None:  # a warm start: the first sweep reads only b_row
        start = (jnp.asarray(init.b_row, Z0.dtype), start[1])
    b_row, b_col = jax.lax.fori_loop(0, n_epochs, sweep, start)
    return AdditiveFit(mu, b_row, b_col, jnp.asarray(reg_row, Z0.dtype))


def _gd(Z0: Array, W: Array, reg_row: Array, reg_col: Array, n_epochs: int, lr: float) -> AdditiveFit:
    mu = global_mean(Z0, W)
    n_obs = jnp.maximum(jnp.sum(W), 1.0)

    def loss(params):
        b_row, b_col = params
        err = (Z0 - mu - b_row[:, None] - b_col[None, :]) * W
        return (jnp.sum(err**2) + reg_row * jnp.sum(b_row**2) + reg_col * jnp.sum(b_col**2)) / n_obs

    tx = optax.adam(lr)
    params = (jnp.zeros(Z0.shape[0], Z0.dtype), jnp.zeros(Z0.shape[1], Z0.dtype))

    def step(_, carry):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    (b_row, b_col), _ = jax.lax.fori_loop(0, n_epochs, step, (params, tx.init(params)))
    return AdditiveFit(mu, b_row, b_col, jnp.asarray(reg_row, Z0.dtype))


@partial(jax.jit, static_argnames=("method", "n_epochs"))
def fit_additive(
    Z: Array,
    mask: Array,
    *,
    method: str = "als",
    reg_row: float = 15.0,
    reg_col: float = 10.0,
    n_epochs: int = 10,
    lr: float = 0.05,
    init: AdditiveFit | None = None,
) -> AdditiveFit:
    """Jitted core of :func:`additive` without host-side validation (vmappable).

    ``init``: start ALS from this fit's row offsets (``b_row [M]``) instead of zeros, e.g. the
    previous fit when rows were appended (:class:`jaxforget.completion.Completer`)."""
    Z0, W = zero_hidden(Z, mask)
    if method == "als":
        return _als(Z0, W, reg_row, reg_col, n_epochs, init)
    if init is not None:
        raise ValueError("fit_additive: init (a warm start) is for method='als' only")
    return _gd(Z0, W, reg_row, reg_col, n_epochs, lr)


def additive(
    Z: Any,
    mask: Any | None = None,
    *,
    method: str = "als",
    reg_row: float = 15.0,
    reg_col: float = 10.0,
    n_epochs: int = 10,
    lr: float = 0.05,
) -> AdditiveFit:
    """Fit ``mu + b_row[i] + b_col[j]`` to the observed entries of ``Z`` (see module docstring).

    Args:
      Z: ``float[M, N]``; hidden entries may hold anything.
      mask: ``bool[M, N]``, True = observed; default: the finite entries of ``Z``.
      method: ``"als"`` (exact alternating updates) or ``"gd"`` (full-batch Adam, ``lr``).
      reg_row, reg_col: ridge penalties on the row and column offsets.
      n_epochs: ALS sweeps or gradient steps.
    """
    check_choice("additive method", method, METHODS)
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1; got {n_epochs}")
    Z0, mask = prepare(Z, mask)
    return fit_additive(Z0, mask, method=method, reg_row=reg_row, reg_col=reg_col, n_epochs=n_epochs, lr=lr)


@jax.jit
def row_mean_fit(Z: Array, mask: Array) -> Array:
    """``[M, N]`` prediction by each row's observed mean (the "task effect only" model)."""
    Z0, W = zero_hidden(Z, mask)
    m = jnp.sum(Z0, axis=1) / jnp.maximum(jnp.sum(W, axis=1), 1.0)
    return jnp.broadcast_to(m[:, None], Z.shape)


@jax.jit
def col_mean_fit(Z: Array, mask: Array) -> Array:
    """``[M, N]`` prediction by each column's observed mean (the "example effect only" model).

    A column without observed entries is predicted by the global mean.
    """
    Z0, W = zero_hidden(Z, mask)
    n = jnp.sum(W, axis=0)
    m = jnp.where(n > 0, jnp.sum(Z0, axis=0) / jnp.maximum(n, 1.0), global_mean(Z0, W))
    return jnp.broadcast_to(m[None, :], Z.shape)


@jax.jit
def _exact_full(Z: Array) -> AdditiveFit:
    mu = jnp.mean(Z)
    return AdditiveFit(mu, jnp.mean(Z, axis=1) - mu, jnp.mean(Z, axis=0) - mu, jnp.zeros((), Z.dtype))


@jax.jit
def _exact_masked(Z: Array, mask: Array) -> AdditiveFit:
    # Normal equations of min sum_obs (R - a_i - b_j)^2 with R = Z - mu: b_j = (c_j - sum_i w_ij a_i) / n_j and
    # (diag(n_row) - W diag(1/n_col) W^T) a = r - W (c / n_col): a graph Laplacian (singular along the
    # all-ones vector of each connected part, where the right-hand side is orthogonal to it).
    Z0, W = zero_hidden(Z, mask)
    mu = global_mean(Z0, W)
    R = (Z0 - mu) * W
    n_row, n_col = jnp.sum(W, axis=1), jnp.sum(W, axis=0)
    inv_col = jnp.where(n_col > 0, 1.0 / jnp.maximum(n_col, 1.0), 0.0)
    c, r = jnp.sum(R, axis=0), jnp.sum(R, axis=1)
    S = jnp.diag(n_row) - mm(W * inv_col, W.T)
    a = jnp.linalg.lstsq(S, r - mm(W, inv_col * c))[0]
    b = inv_col * (c - mm(a, W))
    return AdditiveFit(mu, a, b, jnp.zeros((), Z0.dtype))


def exact_additive(Z: Any, mask: Any | None = None) -> AdditiveFit:
    """The least-squares fit of ``mu + b_row[i] + b_col[j]`` to the observed entries, without ridge
    terms (see module docstring). Its ``fold_in`` is the exact least-squares offset of a new row."""
    Z0, mask = prepare(Z, mask)
    if bool(jnp.all(mask)):
        return _exact_full(Z0)
    return _exact_masked(Z0, mask)
