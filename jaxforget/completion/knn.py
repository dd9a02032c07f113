"""Row-based (task-to-task) k-nearest-neighbour completion, matching scikit-surprise's k-NN algorithms.

Our rows are surprise's users and our columns its items, with ``user_based=True``: the neighbours of
a row are other rows, compared over the columns both observe. Definitions follow surprise 1.1.5
(``similarities.pyx``, ``prediction_algorithms/knns.py``) including its edge cases.

Similarities ``sim[u, v]`` over the common support ``I_uv`` (columns observed in both rows;
``n_uv = |I_uv|``), each set to 0 when ``n_uv < min_support`` and to 1 on the diagonal:

* ``"msd"``: ``1 / (mean_{I_uv} (r_u - r_v)^2 + 1)``.
* ``"cosine"``: ``sum r_u r_v / sqrt(sum r_u^2 * sum r_v^2)`` (sums over ``I_uv``).
* ``"pearson"``: the correlation over ``I_uv`` (means taken over ``I_uv``); 0 when a row is
  constant on ``I_uv`` (denominator 0), in particular when ``n_uv == 1``.
* ``"pearson_baseline"``: cosine of the baseline residuals ``r - (mu + b_row + b_col)``, shrunk by
  ``(n_uv - 1) / (n_uv - 1 + shrinkage)``; ``min_support`` is raised to at least 2.

Prediction for row ``u``, column ``j``: the candidates are the rows observing ``j`` (``u`` itself too
when ``(u, j)`` is observed); the ``k`` with largest ``sim[u, v]`` are taken (ties: lower row index
first, as ``heapq.nlargest`` over surprise's rating lists), and of those only ``sim > 0`` count
(``actual_k`` of them).

* ``rule="basic"`` (``KNNBasic``): ``sum sim * r_v / sum sim``; the global mean when
  ``actual_k < min_k`` (surprise's ``PredictionImpossible`` -> ``default_prediction``), which also
  covers a column nobody observes.
* ``rule="baseline"`` (``KNNBaseline``): ``mu + b_row[u] + b_col[j] + sum sim * (r_v - mu - b_row[v]
  - b_col[j]) / sum sim``; the correction is 0 when ``actual_k < min_k``.

Baselines (for ``rule="baseline"`` and ``sim="pearson_baseline"``) come from
:func:`jaxforget.completion.additive.fit_additive`; the defaults equal surprise's
``bsl_options={'method': 'als', 'reg_u': 15, 'reg_i': 10, 'n_epochs': 10}``.

Where surprise would raise ``ZeroDivisionError`` (a cosine/pearson_baseline denominator of 0, e.g. an
all-zero row on the common support, or ``min_support=0`` with an empty support) the similarity here is
0; a pair without common columns always has similarity 0.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxforget.completion._common import Array, check_choice, global_mean, mm, prepare, zero_hidden
from jaxforget.completion.additive import METHODS as BASELINE_METHODS
from jaxforget.completion.additive import fit_additive

SIMILARITIES = ("msd", "cosine", "pearson", "pearson_baseline")
RULES = ("basic", "baseline")


# --------------------------------------------------------------------------------------------------
# similarities


def _features(kind: str, Z0: Array, W: Array, col_centre: Array, offset: Array, b_col: Array) -> Array:
    """Per-kind transform of the observed values (zero where hidden) fed to the masked products.

    ``msd`` is invariant to a per-column shift and ``pearson`` to a per-row shift, so both are computed
    on shifted values (column means, resp. row means) to limit float32 cancellation; ``offset`` is
    ``mu + b_row`` for ``pearson_baseline``.
    """
    if kind == "msd":
        return (Z0 - col_centre) * W
    if kind == "pearson":
        n_row = jnp.maximum(jnp.sum(W, axis=-1, keepdims=True), 1.0)
        return (Z0 - jnp.sum(Z0, axis=-1, keepdims=True) / n_row) * W
    if kind == "pearson_baseline":
        return (Z0 - offset[:, None] - b_col) * W
    return Z0 * W  # cosine


def pair_sim(
    kind: str, XA: Array, WA: Array, XB: Array, WB: Array, min_support: int, shrinkage: Array
) -> Array:
    """``[Ra, Rb]`` similarities between the rows of A and B (no diagonal convention applied)."""
    freq = mm(WA, WB.T)
    sq_a = mm(XA * XA, WB.T)  # sum over common columns of a^2
    sq_b = mm(WA, (XB * XB).T)  # sum over common columns of b^2
    prods = mm(XA, XB.T)
    one = jnp.ones((), XA.dtype)
    if kind == "msd":
        sq_diff = jnp.maximum(sq_a + sq_b - 2.0 * prods, 0.0)
        s = one / (sq_diff / jnp.maximum(freq, 1.0) + 1.0)
    elif kind == "cosine":
        den = sq_a * sq_b
        s = jnp.where(den > 0, prods / jnp.sqrt(jnp.where(den > 0, den, 1.0)), 0.0)
    elif kind == "pearson":
        s_a, s_b = mm(XA, WB.T), mm(WA, XB.T)
        num = freq * prods - s_a * s_b
        den = jnp.maximum(freq * sq_a - s_a**2, 0.0) * jnp.maximum(freq * sq_b - s_b**2, 0.0)
        s = jnp.where(den > 0, num / jnp.sqrt(jnp.where(den > 0, den, 1.0)), 0.0)
    else:  # pearson_baseline
        den = sq_a * sq_b
        rho = jnp.where(den > 0, prods / jnp.sqrt(jnp.where(den > 0, den, 1.0)), 0.0)
        shrink = (freq - 1.0) / jnp.maximum(freq - 1.0 + shrinkage, jnp.finfo(XA.dtype).tiny)
        s = rho * shrink
        min_support = max(2, min_support)
    ok = (freq >= min_support) & (freq > 0)
    return jnp.where(ok, s, 0.0).astype(XA.dtype)


def _baselines(Z0, mask, W, *, needed, method, reg_row, reg_col, n_epochs, lr):
    """``(mu, b_row, b_col)``; zero offsets when the configuration does not use baselines."""
    if needed:
        fit = fit_additive(Z0, mask, method=method, reg_row=reg_row, reg_col=reg_col, n_epochs=n_epochs, lr=lr)
        return fit.mu, fit.b_row, fit.b_col
    return global_mean(Z0, W), jnp.zeros(Z0.shape[0], Z0.dtype), jnp.zeros(Z0.shape[1], Z0.dtype)


def _col_centre(Z0: Array, W: Array) -> Array:
    return jnp.sum(Z0, axis=0) / jnp.maximum(jnp.sum(W, axis=0), 1.0)


def _full_sim(kind, Z0, W, mu, b_row, b_col, min_support, shrinkage) -> Array:
    X = _features(kind, Z0, W, _col_centre(Z0, W), mu + b_row, b_col)
    s = pair_sim(kind, X, W, X, W, min_support, shrinkage)
    return jnp.where(jnp.eye(Z0.shape[0], dtype=bool), jnp.ones((), s.dtype), s)


@partial(jax.jit, static_argnames=("kind", "min_support", "baseline_method", "baseline_epochs"))
def similarity_matrix(
    Z: Array,
    mask: Array,
    *,
    kind: str = "msd",
    min_support: int = 1,
    shrinkage: float = 100.0,
    baseline_method: str = "als",
    baseline_reg_row: float = 15.0,
    baseline_reg_col: float = 10.0,
    baseline_epochs: int = 10,
    baseline_lr: float = 0.05,
) -> Array:
    """Jitted core of :func:`similarity` without host-side validation (vmappable)."""
    Z0, W = zero_hidden(Z, mask)
    mu, b_row, b_col = _baselines(
        Z0, mask, W, needed=kind == "pearson_baseline", method=baseline_method, reg_row=baseline_reg_row,
        reg_col=baseline_reg_col, n_epochs=baseline_epochs, lr=baseline_lr,
    )
    return _full_sim(kind, Z0, W, mu, b_row, b_col, min_support, jnp.asarray(shrinkage, Z0.dtype))


# --------------------------------------------------------------------------------------------------
# prediction


def _predict_from(s, Wc, Zc, b_cand, b_self, mu, b_col, *, k: int, min_k: int, rule: str) -> Array:
    """Prediction ``[N]`` for one target row from its similarities ``s: [C]`` to candidate rows.

    ``Wc, Zc: [C, N]`` are the candidates' mask/values (the target itself among them when it is a
    fitted row). Neighbour order is one stable sort of ``-s`` (ties -> lower candidate index); per
    column, the running count of observers in that order selects the first ``k``.
    """
    order = jnp.argsort(-s, stable=True)
    s_o, W_o, Z_o = s[order], Wc[order], Zc[order]
    rank = jnp.cumsum(W_o, axis=0)
    use = W_o * (rank <= k) * (s_o > 0)[:, None]  # [C, N]: top-k observers with positive sim
    actual_k = jnp.sum(use, axis=0)
    enough = actual_k >= min_k  # min_k >= 1, so enough => sum_sim > 0
    sum_sim = mm(s_o, use)
    safe_sim = jnp.where(enough, sum_sim, 1.0)
    if rule == "basic":
        est = mm(s_o, use * Z_o) / safe_sim
        return jnp.where(enough, est, mu)
    resid = Z_o - (mu + b_cand[order][:, None] + b_col[None, :])
    corr = jnp.where(enough, mm(s_o, use * resid) / safe_sim, 0.0)
    return mu + b_self + b_col + corr


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["Z0", "W", "sim", "mu", "b_row", "b_col", "reg_row", "shrinkage"],
    meta_fields=["k", "min_k", "rule", "sim_kind", "min_support"],
)
@dataclasses.dataclass(frozen=True)
class KNNFit:
    """A fitted row-kNN model; everything :meth:`predict` and :meth:`fold_in` need.

    ``b_row``/``b_col`` are zero when neither the rule nor the similarity uses baselines; ``mu`` is
    always the mean of the observed entries. ``reg_row`` is the baseline row penalty, used by
    :meth:`fold_in` for the new row's offset.
    """

    Z0: Array  # [M, N] observed values, 0 where hidden
    W: Array  # [M, N] mask as float
    sim: Array  # [M, M] row-row similarities (diagonal 1)
    mu: Array  # []
    b_row: Array  # [M]
    b_col: Array  # [N]
    reg_row: Array  # []
    shrinkage: Array  # []
    k: int
    min_k: int
    rule: str
    sim_kind: str
    min_support: int

    @property
    def uses_baselines(self) -> bool:
        return self.rule == "baseline" or self.sim_kind == "pearson_baseline"

    def predict_row(self, i: Array | int) -> Array:
        """Prediction ``[N]`` for fitted row ``i`` (observed entries included, as surprise does)."""
        return _predict_row(self, jnp.asarray(i))

    def predict(self) -> Array:
        """The full ``[M, N]`` prediction, one row at a time (memory ``O(M N)``)."""
        return _predict_all(self)

    def fold_in(self, z: Array, mask: Array) -> Array:
        """Predict a new row ``[N]`` from its observed entries without refitting.

        Its similarities to the fitted rows use the same definitions (for baseline quantities, the new
        row's offset is the closed-form ALS row update with the fitted ``b_col``, as
        :meth:`AdditiveFit.fold_in`); the new row is also its own candidate (similarity 1, ranked after
        the fitted rows on ties) for the columns it observes, as it would be in surprise had it been
        the last row of the trainset. Works on a batch (``z, mask: [R, N]``) too.
        """
        z = jnp.asarray(z, self.Z0.dtype)
        mask = jnp.asarray(mask, bool)
        if z.ndim == 2:
            return jax.vmap(lambda zz, mm_: _fold_in(self, zz, mm_))(z, mask)
        return _fold_in(self, z, mask)


@jax.jit
def _predict_row(fit: KNNFit, i: Array) -> Array:
    return _predict_from(
        fit.sim[i], fit.W, fit.Z0, fit.b_row, fit.b_row[i], fit.mu, fit.b_col,
        k=fit.k, min_k=fit.min_k, rule=fit.rule,
    )


@jax.jit
def _predict_all(fit: KNNFit) -> Array:
    return jax.lax.map(lambda i: _predict_row(fit, i), jnp.arange(fit.Z0.shape[0]))


@jax.jit
def _fold_in(fit: KNNFit, z: Array, mask: Array) -> Array:
    z0, w = zero_hidden(z, mask)
    if fit.uses_baselines:
        b_new = jnp.sum(w * (z0 - fit.mu - fit.b_col)) / (fit.reg_row + jnp.sum(w))
    else:
        b_new = jnp.zeros((), z0.dtype)
    kind = fit.sim_kind
    col_centre = _col_centre(fit.Z0, fit.W)
    X = _features(kind, fit.Z0, fit.W, col_centre, fit.mu + fit.b_row, fit.b_col)
    x = _features(kind, z0[None], w[None], col_centre, (fit.mu + b_new)[None], fit.b_col)
    s = pair_sim(kind, x, w[None], X, fit.W, fit.min_support, fit.shrinkage)[0]  # [M]
    one = jnp.ones((1,), s.dtype)
    return _predict_from(
        jnp.concatenate([s, one]),
        jnp.concatenate([fit.W, w[None]]),
        jnp.concatenate([fit.Z0, z0[None]]),
        jnp.concatenate([fit.b_row, b_new[None]]),
        b_new, fit.mu, fit.b_col, k=fit.k, min_k=fit.min_k, rule=fit.rule,
    )


# --------------------------------------------------------------------------------------------------
# fitting


@partial(
    jax.jit,
    static_argnames=("k", "min_k", "sim", "rule", "min_support", "baseline_method", "baseline_epochs"),
)
def fit_knn(
    Z: Array,
    mask: Array,
    *,
    k: int = 40,
    min_k: int = 1,
    sim: str = "msd",
    rule: str = "baseline",
    min_support: int = 1,
    shrinkage: float = 100.0,
    baseline_method: str = "als",
    baseline_reg_row: float = 15.0,
    baseline_reg_col: float = 10.0,
    baseline_epochs: int = 10,
    baseline_lr: float = 0.05,
) -> KNNFit:
    """Jitted core of :func:`knn` without host-side validation (vmappable)."""
    Z0, W = zero_hidden(Z, mask)
    mu, b_row, b_col = _baselines(
        Z0, mask, W, needed=rule == "baseline" or sim == "pearson_baseline", method=baseline_method,
        reg_row=baseline_reg_row, reg_col=baseline_reg_col, n_epochs=baseline_epochs, lr=baseline_lr,
    )
    shrink = jnp.asarray(shrinkage, Z0.dtype)
    S = _full_sim(sim, Z0, W, mu, b_row, b_col, min_support, shrink)
    return KNNFit(
        Z0=Z0, W=W, sim=S, mu=mu, b_row=b_row, b_col=b_col, reg_row=jnp.asarray(baseline_reg_row, Z0.dtype),
        shrinkage=shrink, k=k, min_k=min_k, rule=rule, sim_kind=sim, min_support=min_support,
    )


def _check_int(name: str, value: Any, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}; got {value!r}")


def _check_common(sim, min_support, shrinkage, baseline_method, baseline_epochs, sim_field="knn sim"):
    check_choice(sim_field, sim, SIMILARITIES)
    _check_int("min_support", min_support, 0)
    if not shrinkage >= 0:
        raise ValueError(f"shrinkage must be >= 0; got {shrinkage!r}")
    check_choice("baseline_method", baseline_method, BASELINE_METHODS)
    _check_int("baseline_epochs", baseline_epochs, 1)


def knn(
    Z: Any,
    mask: Any | None = None,
    *,
    k: int = 40,
    min_k: int = 1,
    sim: str = "msd",
    rule: str = "baseline",
    min_support: int = 1,
    shrinkage: float = 100.0,
    baseline_method: str = "als",
    baseline_reg_row: float = 15.0,
    baseline_reg_col: float = 10.0,
    baseline_epochs: int = 10,
    baseline_lr: float = 0.05,
) -> KNNFit:
    """Row-based kNN completion of ``Z`` (see module docstring for the exact definitions).

    Args:
      Z: ``float[M, N]``; hidden entries may hold anything.
      mask: ``bool[M, N]``, True = observed; default: the finite entries of ``Z``.
      k, min_k: at most ``k`` neighbours; fewer than ``min_k`` positive-similarity neighbours -> the
        global mean (``rule="basic"``) or the baseline alone (``rule="baseline"``).
      sim: ``"msd"``, ``"cosine"``, ``"pearson"`` or ``"pearson_baseline"``.
      rule: ``"basic"`` (surprise ``KNNBasic``) or ``"baseline"`` (``KNNBaseline``).
      min_support: pairs of rows with fewer common observed columns get similarity 0.
      shrinkage: ``pearson_baseline`` shrinkage.
      baseline_*: options of the additive baseline fit (surprise's ``bsl_options``: ``reg_u`` =
        ``baseline_reg_row``, ``reg_i`` = ``baseline_reg_col``, ``n_epochs`` = ``baseline_epochs``).
    """
    _check_common(sim, min_support, shrinkage, baseline_method, baseline_epochs)
    check_choice("knn rule", rule, RULES)
    _check_int("k", k, 1)
    _check_int("min_k", min_k, 1)
    Z0, mask = prepare(Z, mask)
    return fit_knn(
        Z0, mask, k=k, min_k=min_k, sim=sim, rule=rule, min_support=min_support, shrinkage=shrinkage,
        baseline_method=baseline_method, baseline_reg_row=baseline_reg_row, baseline_reg_col=baseline_reg_col,
        baseline_epochs=baseline_epochs, baseline_lr=baseline_lr,
    )


def similarity(
    Z: Any,
    mask: Any | None = None,
    kind: str = "msd",
    *,
    min_support: int = 1,
    shrinkage: float = 100.0,
    baseline_method: str = "als",
    baseline_reg_row: float = 15.0,
    baseline_reg_col: float = 10.0,
    baseline_epochs: int = 10,
    baseline_lr: float = 0.05,
) -> Array:
    """Task-task similarity matrix ``[M, M]`` (surprise's ``algo.sim`` with ``user_based=True``).

    ``kind`` is one of ``"msd"``, ``"cosine"``, ``"pearson"``, ``"pearson_baseline"``; see the module
    docstring for the definitions and the other arguments at :func:`knn`.
    """
    _check_common(kind, min_support, shrinkage, baseline_method, baseline_epochs, sim_field="similarity kind")
    Z0, mask = prepare(Z, mask)
    return similarity_matrix(
        Z0, mask, kind=kind, min_support=min_support, shrinkage=shrinkage, baseline_method=baseline_method,
        baseline_reg_row=baseline_reg_row, baseline_reg_col=baseline_reg_col, baseline_epochs=baseline_epochs,
        baseline_lr=baseline_lr,
    )
