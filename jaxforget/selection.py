"""Choosing upstream examples to replay from their scores (predicted or measured forgetting)."""

from __future__ import annotations

from typing import Any

import numpy as np


def sample_without_replacement(scores: Any, n: int, *, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct indices drawn one after another with probability softmax(scores / temperature)
    over the indices not drawn yet, in draw order (Gumbel-top-n: the n largest of scores / temperature
    plus i.i.d. Gumbel noise). Non-finite scores are an error."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(f"scores have {bad.size} non-finite entries (first at {int(bad[0])})")
    if not 0 <= n <= scores.size:
        raise ValueError(f"cannot draw {n} distinct items from {scores.size}")
    keys = scores / temperature + rng.gumbel(size=scores.size)
    return np.argsort(-keys, kind="stable")[:n]
