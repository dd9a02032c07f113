"""Metrics over masked entries, written with fixed shapes so they jit and vmap (over seeds, methods).

Every metric takes ``pred`` and ``Z`` of one shape plus ``mask`` (True = entry counts) and pools all
masked entries, as the paper pools the hidden entries of all test tasks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxforget.completion._common import Array


def r2(Z: Array, Z_hat: Array, mask: Array | None = None) -> Array:
    """``1 - mean (Z - Zhat)^2 / mean (Z - mean Z)^2`` over the masked (default: finite) entries."""
    Z = jnp.asarray(Z)
    mask = jnp.isfinite(Z) if mask is None else jnp.asarray(mask, bool)
    return _r2(Z, jnp.asarray(Z_hat), mask)


@jax.jit
def _r2(Z, Z_hat, mask):
    w = mask.astype(Z_hat.dtype)
    Z0 = jnp.where(mask, Z, 0.0)
    mean = jnp.sum(Z0) / jnp.sum(w)
    ss_res = jnp.sum(w * (Z0 - jnp.where(mask, Z_hat, 0.0)) ** 2)
    ss_tot = jnp.sum(w * (Z0 - mean) ** 2)
    return 1.0 - ss_res / ss_tot


def rmse(pred: Array, Z: Array, mask: Array) -> Array:
    w = mask.astype(pred.dtype)
    err = jnp.where(mask, pred - jnp.where(mask, Z, 0.0), 0.0)
    return jnp.sqrt(jnp.sum(err**2) / jnp.maximum(jnp.sum(w), 1.0))


def classification(pred: Array, Z: Array, mask: Array, threshold: float = 0.0,
                   pred_threshold: float | None = None) -> dict[str, Array]:
    """Precision, recall and F1 of "forgotten" = ``Z > threshold`` predicted as
    ``pred > pred_threshold`` (default: the same threshold; 0 on logits for logistic models)."""
    pred_threshold = threshold if pred_threshold is None else pred_threshold
    truth = mask & (jnp.where(mask, Z, -jnp.inf) > threshold)
    guess = mask & (pred > pred_threshold)
    tp = jnp.sum(truth & guess)
    precision = tp / jnp.maximum(jnp.sum(guess), 1)
    recall = tp / jnp.maximum(jnp.sum(truth), 1)
    f1 = 2 * tp / jnp.maximum(jnp.sum(truth) + jnp.sum(guess), 1)
    return dict(precision=precision, recall=recall, f1=f1)


def roc_auc(scores: Array, labels: Array, mask: Array) -> Array:
    """ROC-AUC of ``scores`` for boolean ``labels`` over masked entries (Mann-Whitney U with
    mid-ranks for ties). NaN when the masked entries hold only one class.

    Counts are floats and U is accumulated as the mean over positives of
    ``(midrank - (n_pos + 1) / 2) / n_neg`` (each term in [0, 1]): no integer product of counts (an
    int32 ``n_pos * n_neg`` overflows beyond ~46k entries per class) and no float32 cancellation of
    two sums of order ``n_pos * n``. Mid-ranks are exact in float32 up to 2^23 entries (masked or not).
    """
    scores = jnp.asarray(scores)
    s = jnp.where(mask, scores, jnp.inf).ravel()
    lab = (mask & labels).ravel()
    m = mask.ravel()
    ordered = jnp.sort(s)  # excluded entries sort last as +inf and never tie with a finite score
    lo = jnp.searchsorted(ordered, s, side="left")
    hi = jnp.searchsorted(ordered, s, side="right")
    ftype = scores.dtype if jnp.issubdtype(scores.dtype, jnp.floating) else jnp.float32
    midrank = (lo.astype(ftype) + hi.astype(ftype) + 1) / 2  # 1-based average rank among tied scores
    n_pos = jnp.sum(lab, dtype=ftype)
    n_neg = jnp.sum(m, dtype=ftype) - n_pos
    term = (midrank - (n_pos + 1) / 2) / jnp.maximum(n_neg, 1)
    auc = jnp.sum(jnp.where(lab, term, 0)) / jnp.maximum(n_pos, 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)


def _inclusion(scores: Array, mask: Array, n_row: Array, n: int) -> Array:
    """Probability that each masked entry is among its row's ``n_row`` highest ``scores`` when ties
    are broken uniformly at random: 1 above the ``n_row``-th value, ``free slots / tied entries`` at
    it, 0 below. ``scores, mask: [R, N]``, ``n_row: [R]`` (<= n)."""
    s = jnp.where(mask, scores, -jnp.inf)
    top, _ = jax.lax.top_k(s, n)
    cut = jnp.take_along_axis(top, jnp.maximum(n_row - 1, 0)[:, None], axis=-1)  # [R, 1]
    above = mask & (s > cut)
    tied = mask & (s == cut)
    free = n_row - jnp.sum(above, axis=-1)
    share = free / jnp.maximum(jnp.sum(tied, axis=-1), 1)
    return jnp.where(above, 1.0, jnp.where(tied, share[:, None], 0.0)) * (n_row > 0)[:, None]


def precision_at_n(pred: Array, Z: Array, mask: Array, n: int) -> Array:
    """Per row, the fraction of the ``n`` masked entries with the highest prediction that are among
    the row's ``n`` masked entries with the highest true value; averaged over rows. Rows with fewer
    than ``n`` masked entries use all they have. ``pred, Z, mask: [R, N]``.

    Ties (a constant predictor, clipped predictions, a binary Z) are broken uniformly at random and
    the expectation is returned, so a predictor that ranks nothing scores the chance level
    ``n / (masked entries)`` instead of whatever index order would give."""
    n = min(n, pred.shape[-1])
    n_row = jnp.minimum(jnp.sum(mask, axis=-1), n)
    hits = jnp.sum(_inclusion(pred, mask, n_row, n) * _inclusion(Z, mask, n_row, n), axis=-1)
    per_row = hits / jnp.maximum(n_row, 1)
    has = n_row > 0
    return jnp.sum(jnp.where(has, per_row, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def all_metrics(pred: Array, Z: Array, mask: Array, *, threshold: float = 0.0, pred_threshold: float | None = None,
                top_n: int = 100) -> dict[str, Array]:
    """RMSE, precision/recall/F1 at the threshold, ROC-AUC and precision@n over masked entries of
    ``[R, N]`` arrays (one protocol seed)."""
    pt = threshold if pred_threshold is None else pred_threshold
    labels = jnp.where(mask, Z, -jnp.inf) > threshold
    out = dict(rmse=rmse(pred, Z, mask))
    out.update(classification(pred, Z, mask, threshold, pt))
    out["auc"] = roc_auc(pred, labels, mask)
    out[f"precision@{top_n}"] = precision_at_n(pred, Z, mask, top_n)
    return out
