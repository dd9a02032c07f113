"""Metrics over masked entries, written with fixed shapes so they jit and vmap (over seeds, methods).

Every metric takes ``pred`` and ``Z`` of one shape plus ``mask`` (True = entry counts) and pools all
masked entries, as the paper pools the hidden entries of all test tasks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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

    One sort of the scores carrying the labels (:func:`labels_in_score_order`); a tie group's mid-rank
    is the mean of its first and last sorted positions, found by cumulative max/min over the group
    boundaries.

    Counts are floats and U is accumulated as the mean over positives of
    ``(midrank - (n_pos + 1) / 2) / n_neg`` (each term in [0, 1]): no integer product of counts (an
    int32 ``n_pos * n_neg`` overflows beyond ~46k entries per class) and no float32 cancellation of
    two sums of order ``n_pos * n``. Mid-ranks are exact in float32 up to 2^23 entries (masked or not).
    """
    scores = jnp.asarray(scores)
    lab = (mask & labels).ravel()
    m = mask.ravel()
    keys, lab_s = labels_in_score_order(scores.ravel(), lab, m)  # excluded entries sort last, apart
    n = keys.shape[0]
    pos = jnp.arange(n, dtype=jnp.int32)
    first = jnp.concatenate([jnp.ones(1, bool), keys[1:] != keys[:-1]])
    last = jnp.concatenate([keys[1:] != keys[:-1], jnp.ones(1, bool)])
    start = jax.lax.cummax(jnp.where(first, pos, 0))
    end = jax.lax.cummin(jnp.where(last, pos, n), reverse=True)
    ftype = scores.dtype if jnp.issubdtype(scores.dtype, jnp.floating) else jnp.float32
    midrank = (start.astype(ftype) + end.astype(ftype)) / 2 + 1  # 1-based average rank among tied scores
    n_pos = jnp.sum(lab, dtype=ftype)
    n_neg = jnp.sum(m, dtype=ftype) - n_pos
    term = (midrank - (n_pos + 1) / 2) / jnp.maximum(n_neg, 1)
    auc = jnp.sum(jnp.where(lab_s, term, 0)) / jnp.maximum(n_pos, 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)


_LAST = np.uint32(0xFFFFFFFF)  # numpy: a jnp constant here would start the XLA backend at import


def labels_in_score_order(scores: Array, labels: Array, valid: Array) -> tuple[Array, Array]:
    """``(keys, labels)`` sorted by score, 1-D uint32 keys equal exactly where the scores are equal;
    entries not ``valid`` last, with keys of their own.

    XLA's CPU sort of one 32-bit integer array is ~5x faster than of a float array or of a (key, label)
    pair (2.7M entries on a 2-core CPU: 0.13 vs 0.65-0.75 CPU-s), so the label rides in the lowest bit
    of a uint32 key: the score's integer key (:func:`sort_keys`) less the smallest, shifted left. That
    fits where the valid keys span fewer than 2^31 values -- scores within about (-2, 2), or of one
    sign; otherwise the scores below zero and those from zero up (which always fit) are sorted apart
    and joined."""
    k = sort_keys(jnp.where(valid, scores, 0))
    n = k.shape[0]

    def packed_sort(sel):
        """The ``sel`` entries, packed and sorted (the rest last); their count; shifted keys."""
        lo = jnp.min(jnp.where(sel, k, jnp.iinfo(jnp.int32).max))
        x = ((k.astype(jnp.uint32) - lo.astype(jnp.uint32)) << 1) | labels.astype(jnp.uint32)
        return jnp.sort(jnp.where(sel, x, _LAST)), jnp.sum(sel)

    def unpack(x):
        return jnp.where(x == _LAST, _LAST, x >> 1), (x & 1).astype(bool) & (x != _LAST)

    def one(_):
        return unpack(packed_sort(valid)[0])

    def by_sign(_):
        neg, n_neg = packed_sort(valid & (k < 0))
        pos, n_pos = packed_sort(valid & (k >= 0))
        i = jnp.arange(n)
        x = jnp.where(i < n_neg, neg, pos[jnp.clip(i - n_neg, 0, n - 1)])
        keys, lab = unpack(x)
        # a key from the upper part never equals one from the lower: mark it in the top bit
        keys = jnp.where((i >= n_neg) & (i < n_neg + n_pos), keys | jnp.uint32(2**31), keys)
        return keys, lab

    lo = jnp.min(jnp.where(valid, k, jnp.iinfo(jnp.int32).max))
    hi = jnp.max(jnp.where(valid, k, jnp.iinfo(jnp.int32).min))
    span = hi.astype(jnp.uint32) - lo.astype(jnp.uint32)  # exact modulo 2^32: finite keys span < 2^32
    fits = (span < jnp.uint32(2**31 - 1)) | ~jnp.any(valid)
    return jax.lax.cond(fits, one, by_sign, None)


def sort_keys(x: Array) -> Array:
    """int32 keys in the order of the float32 values ``x`` (NaN excluded; -0 and +0 equal): the IEEE
    bits, with the magnitude bits of negative values flipped so that larger magnitudes sort lower."""
    x = jnp.where(x == 0, jnp.zeros((), x.dtype), x).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


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
