"""Choosing upstream examples to replay from their scores (predicted or measured forgetting).

Three rules turn ``scores: float[N]`` over N candidates into ``n`` distinct indices (:func:`select`); each
takes a seeded ``np.random.Generator`` and is deterministic for its state:

- ``softmax`` (the paper's): sequential draws without replacement with probability
  softmax(score / temperature) (:func:`sample_without_replacement`). Its sharpness depends on the
  scale of the scores: the same temperature is nearly uniform on scores of 0.01 and nearly greedy on
  scores of 10.
- ``zsoftmax``: the softmax rule on the scores standardised over the candidates ((s - mean) / std;
  all zeros, i.e. uniform, when std == 0), so that the temperature is in units of the scores' standard
  deviation: the draws are invariant to a positive scale and a shift of the scores.
- ``stratified``: diversity-preserving. The candidates carry an integer stratum (replay passes the
  upstream example's domain, its ``source``); the n draws are allocated across strata in proportion
  to their sizes (:func:`allocate`: largest remainder, never more than a stratum has), and each
  stratum's draws follow the zsoftmax rule on the scores standardised within that stratum. It keeps
  random replay's domain mix and lets the score choose only *which* examples within a domain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RULES = ("softmax", "zsoftmax", "stratified")
"""The selection rules :func:`select` takes; replay's ``<strategy>@<rule>``."""


def _check_scores(scores: Any) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(f"scores have {bad.size} non-finite entries (first at {int(bad[0])})")
    return scores


def sample_without_replacement(scores: Any, n: int, *, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct indices drawn one after another with probability softmax(scores / temperature)
    over the indices not drawn yet, in draw order (Gumbel-top-n: the n largest of scores / temperature
    plus i.i.d. Gumbel noise). Non-finite scores are an error."""
    scores = _check_scores(scores)
    if not 0 <= n <= scores.size:
        raise ValueError(f"cannot draw {n} distinct items from {scores.size}")
    keys = scores / temperature + rng.gumbel(size=scores.size)
    return np.argsort(-keys, kind="stable")[:n]


def standardize(scores: Any) -> np.ndarray:
    """``(scores - mean) / std`` over the entries (population std); all zeros when the std is 0 (or at the
    rounding level of the scores' magnitude: a constant vector after float rounding)."""
    scores = _check_scores(scores)
    if scores.size == 0:
        return scores
    centred = scores - scores.mean()
    std = float(np.sqrt(np.mean(centred ** 2)))
    # a std at rounding level of the mean is a constant vector: uniform, whatever the rounding left
    if std <= 1e-12 * max(1.0, float(np.abs(scores).max())):
        return np.zeros_like(scores)
    return centred / std


def allocate(sizes: Any, n: int) -> np.ndarray:
    """How many of ``n`` draws each stratum gets: ``n * size / total`` rounded down, the remainder
    given one by one to the largest fractional parts (ties: the lower stratum first). A stratum never
    gets more than its size; what a full stratum cannot take is allocated again, the same way, over
    the strata with room. ``sizes: int[S] >= 0``; returns ``int[S]`` summing to n."""
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 0).any():
        raise ValueError(f"sizes must be a one-dimensional array of counts >= 0, got {sizes!r}")
    sizes = sizes.astype(np.int64)
    if not 0 <= n <= sizes.sum():
        raise ValueError(f"cannot draw {n} distinct items from {int(sizes.sum())}")
    q = np.zeros_like(sizes)
    while q.sum() < n:
        room = sizes - q
        weight = np.where(room > 0, sizes, 0)
        left = n - int(q.sum())
        raw = left * weight / weight.sum()
        add = np.floor(raw).astype(np.int64)
        add[np.argsort(-(raw - add), kind="stable")[: left - int(add.sum())]] += 1
        q += np.minimum(add, room)  # progress: some open stratum gets >= 1
    return q


def stratified_sample(scores: Any, strata: Any, n: int, *, temperature: float,
                      rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct indices: :func:`allocate` over the strata (integer labels, one per score), then within
    each stratum the Gumbel-top-q of its scores standardised within the stratum, divided by
    ``temperature``. One Gumbel draw per candidate (a single ``rng.gumbel(size=N)`` call). Returned by
    stratum (ascending label), each stratum's indices in draw order; the order across strata is not a
    draw order (replay shuffles the chosen examples)."""
    scores = _check_scores(scores)
    strata = np.asarray(strata)
    if strata.shape != scores.shape or not np.issubdtype(strata.dtype, np.integer):
        raise ValueError(f"strata must be integer labels, one per score: got {strata.dtype} shape {strata.shape} "
                         f"for scores of shape {scores.shape}")
    if not 0 <= n <= scores.size:
        raise ValueError(f"cannot draw {n} distinct items from {scores.size}")
    labels, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    quota = allocate(sizes, n)
    z = np.zeros_like(scores)
    members = [np.flatnonzero(inverse == s) for s in range(labels.size)]
    for idx in members:
        z[idx] = standardize(scores[idx])
    keys = z / temperature + rng.gumbel(size=scores.size)
    out = [idx[np.argsort(-keys[idx], kind="stable")[:q]] for idx, q in zip(members, quota)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def select(rule: str, scores: Any, n: int, *, temperature: float, rng: np.random.Generator,
           strata: Any | None = None) -> np.ndarray:
    """``n`` distinct indices of ``scores: float[N]`` by ``rule`` (one of :data:`RULES`; see the module
    docstring). ``strata: int[N]`` is required by ``stratified`` and ignored by the others. ``softmax``
    is :func:`sample_without_replacement` itself: the same draws for the same generator state."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if rule == "softmax":
        return sample_without_replacement(scores, n, temperature=temperature, rng=rng)
    if rule == "zsoftmax":
        return sample_without_replacement(standardize(scores), n, temperature=temperature, rng=rng)
    if strata is None:
        raise ValueError("the stratified rule needs strata: one integer label (e.g. the domain) per score")
    return stratified_sample(scores, strata, n, temperature=temperature, rng=rng)
