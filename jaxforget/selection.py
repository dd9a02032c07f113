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

**How sharp a draw is.** The effective sample size of a draw's weights w = softmax(u / τ) over the
N candidates, ESS = (Σw)² / Σw² (:func:`ess_fraction` gives it as a fraction of N), is N for a
uniform draw and 1 for a greedy one. The paper's τ = 0.1 gives very different ESS on rows of
different scale; :func:`temperature_for_ess` finds the τ that gives a chosen ESS, so a draw can be
specified by its sharpness instead (``draw(..., ess=F)``: scale-free, the same experiment on any
row). u is what the rule applies the softmax to: the scores (softmax), the scores standardised over
the candidates (zsoftmax) or within their stratum (stratified).

**Common random numbers.** :func:`draw` takes the Gumbel noise as an argument: arms of an experiment
that share one noise vector differ only in their scores (random replay is the top-n of the noise
alone), which removes the draw's own randomness from their paired differences.
"""

from __future__ import annotations

import dataclasses
import math
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
    plus i.i.d. Gumbel noise, one ``rng.gumbel(size=N)`` call: :func:`draw`). Non-finite scores are an
    error."""
    return draw("softmax", scores, n, gumbel=rng.gumbel(size=np.size(scores)), temperature=temperature).indices


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
    ``temperature``. One Gumbel draw per candidate (a single ``rng.gumbel(size=N)`` call: :func:`draw`).
    Returned by stratum (ascending label), each stratum's indices in draw order; the order across strata is
    not a draw order (replay shuffles the chosen examples)."""
    return draw("stratified", scores, n, gumbel=rng.gumbel(size=np.size(scores)), temperature=temperature,
                strata=strata).indices


def select(rule: str, scores: Any, n: int, *, temperature: float, rng: np.random.Generator,
           strata: Any | None = None) -> np.ndarray:
    """``n`` distinct indices of ``scores: float[N]`` by ``rule`` (one of :data:`RULES`; see the module
    docstring). ``strata: int[N]`` is required by ``stratified`` and ignored by the others. The noise is one
    ``rng.gumbel(size=N)`` call (:func:`draw` with it): ``softmax`` is :func:`sample_without_replacement`
    itself, the same draws for the same generator state."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return draw(rule, scores, n, gumbel=rng.gumbel(size=np.size(scores)), temperature=temperature,
                strata=strata).indices


def softmax_weights(u: Any, temperature: float) -> np.ndarray:
    """softmax(u / temperature) over the entries of ``u: float[N]`` (float64; temperature may be ``inf``:
    uniform)."""
    u = np.asarray(u, np.float64)
    if u.size == 0:
        return u
    if math.isinf(temperature):
        return np.full(u.size, 1.0 / u.size)
    x = (u - u.max()) / temperature
    w = np.exp(x)
    return w / w.sum()


def ess_fraction(u: Any, temperature: float) -> float:
    """The effective sample size (Σw)² / Σw² of w = softmax(u / temperature), as a fraction of the N
    entries: 1 for a uniform draw, 1 / N for a greedy one. NaN for N = 0."""
    w = softmax_weights(u, temperature)
    return float(1.0 / np.sum(w * w) / w.size) if w.size else math.nan


def temperature_for_ess(u: Any, fraction: float, *, rtol: float = 1e-6) -> float:
    """The temperature τ at which softmax(u / τ) has an effective sample size of ``fraction`` × N
    (0 < fraction <= 1; ESS grows with τ, so bisection on log τ finds it, to ``rtol`` in ESS).
    ``inf`` when every entry is equal or fraction == 1 (any τ, or only the uniform draw, gives it);
    when even the greedy limit is flatter than asked (ties at the maximum), the smallest τ tried."""
    u = np.asarray(u, np.float64)
    if not 0 < fraction <= 1:
        raise ValueError(f"ess must be in (0, 1] (a fraction of the candidates), got {fraction}")
    spread = float(u.max() - u.min()) if u.size else 0.0
    if fraction == 1 or spread == 0:
        return math.inf
    lo, hi = math.log(spread * 1e-6), math.log(spread * 1e6)  # ESS(τ_lo) ~ ties at the max, ESS(τ_hi) ~ N
    for _ in range(200):
        mid = (lo + hi) / 2
        if ess_fraction(u, math.exp(mid)) < fraction:
            lo = mid
        else:
            hi = mid
        if hi - lo < rtol:
            break
    return math.exp(hi)


@dataclasses.dataclass(frozen=True)
class Draw:
    """One draw of replayed examples: the chosen indices and how sharp the draw was."""

    indices: np.ndarray
    """int[n] distinct candidate indices; by rule as :func:`select` returns them (draw order for softmax
    and zsoftmax, by stratum for stratified)."""
    order: np.ndarray
    """int[N] every candidate in key order (largest key first): ``indices`` is its first n for softmax and
    zsoftmax; a budget in tokens takes a prefix of it (:mod:`jaxforget.replay`)."""
    temperature: float
    """The τ applied (``inf``: uniform)."""
    ess: float
    """The effective sample size of the draw's weights over the candidates, as a fraction of them."""


def transformed(rule: str, scores: Any, strata: Any | None = None) -> np.ndarray:
    """What ``rule`` applies the softmax to: the scores (softmax), standardised over the candidates
    (zsoftmax) or within each stratum (stratified)."""
    scores = _check_scores(scores)
    if rule == "softmax":
        return scores
    if rule == "zsoftmax":
        return standardize(scores)
    if rule != "stratified":
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")
    if strata is None:
        raise ValueError("the stratified rule needs strata: one integer label (e.g. the domain) per score")
    strata = np.asarray(strata)
    if strata.shape != scores.shape or not np.issubdtype(strata.dtype, np.integer):
        raise ValueError(f"strata must be integer labels, one per score: got {strata.dtype} shape {strata.shape} "
                         f"for scores of shape {scores.shape}")
    z = np.zeros_like(scores)
    for label in np.unique(strata):
        idx = np.flatnonzero(strata == label)
        z[idx] = standardize(scores[idx])
    return z


def draw(rule: str, scores: Any, n: int, *, gumbel: Any, temperature: float | None = None,
         ess: float | None = None, strata: Any | None = None) -> Draw:
    """The one implementation of the rules: ``n`` distinct indices of ``scores: float[N]`` by ``rule`` with
    the Gumbel noise given (``gumbel: float[N]``: the same noise for every arm of a paired experiment;
    :func:`select` passes ``rng.gumbel(size=N)``) and the sharpness given either as ``temperature`` or as a
    target ``ess`` (a fraction of the N candidates; τ found by :func:`temperature_for_ess` on what the rule
    applies the softmax to)."""
    if (temperature is None) == (ess is None):
        raise ValueError("give exactly one of temperature and ess")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    u = transformed(rule, scores, strata)
    g = np.asarray(gumbel, np.float64)
    if g.shape != u.shape:
        raise ValueError(f"gumbel noise has shape {g.shape}, the scores {u.shape}")
    if not 0 <= n <= u.size:
        raise ValueError(f"cannot draw {n} distinct items from {u.size}")
    tau = temperature if temperature is not None else temperature_for_ess(u, ess)
    keys = g if math.isinf(tau) else u / tau + g
    order = np.argsort(-keys, kind="stable")
    if rule == "stratified":
        labels, inverse, sizes = np.unique(np.asarray(strata), return_inverse=True, return_counts=True)
        quota = allocate(sizes, n)
        members = [np.flatnonzero(inverse == s) for s in range(labels.size)]
        ranked = [idx[np.argsort(-keys[idx], kind="stable")] for idx in members]
        parts = [r[:q] for r, q in zip(ranked, quota)]
        indices = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        # a nested order for budgets in tokens: each stratum's examples in key order at the evenly spaced
        # positions (rank + 1/2) / size, merged, so every prefix keeps the pool's domain mix (to one example)
        position = np.zeros(u.size)
        for r in ranked:
            position[r] = (np.arange(r.size) + 0.5) / r.size
        order = np.lexsort((-keys, position))
    else:
        indices = order[:n]
    return Draw(indices, order, float(tau), ess_fraction(u, tau))
