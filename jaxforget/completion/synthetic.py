"""Seeded synthetic forgetting matrices with known structure (numpy only).

Used by tests, by the completion benchmark and by ``python -m jaxforget.predict`` when no matrix is
given. The structure mirrors what the paper reports for real matrices: a dominant multiplicative
component (some tasks forget more, some examples are forgotten more), a few weaker components,
additive offsets, sparse blocks (a subset of examples forgotten only by a subset of tasks) and noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Planted:
    """A planted matrix and its parts. ``Z = signal + noise``; ``blocks`` lists (rows, cols) pairs."""

    Z: np.ndarray
    signal: np.ndarray
    blocks: list[tuple[np.ndarray, np.ndarray]]
    seed: int


def planted_matrix(
    n_rows: int = 85,
    n_cols: int = 2000,
    *,
    rank: int = 3,
    additive_scale: float = 0.05,
    n_blocks: int = 2,
    block_scale: float = 0.3,
    noise: float = 0.05,
    nan_fraction: float = 0.0,
    seed: int = 0,
) -> Planted:
    """``Z[i, j] = sum_r s_r a_ir b_jr + c_i + d_j + blocks + noise`` (float32).

    The first component has positive task effects (log-normal) and example effects (gamma), the way
    forgetting is mostly positive and heavy-tailed; the others are Gaussian and weaker (scale 0.5^r).
    ``nan_fraction`` of the entries are set to NaN (missing measurements).
    """
    rng = np.random.default_rng(seed)
    alpha = rng.lognormal(0.0, 0.5, n_rows)
    beta = rng.gamma(2.0, 0.1, n_cols)
    signal = np.outer(alpha, beta)
    for r in range(1, rank):
        signal += 0.5**r * np.outer(rng.normal(0, 0.3, n_rows), rng.normal(0, 0.3, n_cols))
    signal += additive_scale * (rng.normal(size=(n_rows, 1)) + rng.normal(size=(1, n_cols)))
    blocks = []
    for _ in range(n_blocks):
        rows = np.sort(rng.choice(n_rows, max(2, n_rows // 10), replace=False))
        cols = np.sort(rng.choice(n_cols, max(2, n_cols // 20), replace=False))
        signal[np.ix_(rows, cols)] += block_scale
        blocks.append((rows, cols))
    Z = signal + noise * rng.normal(size=signal.shape)
    if nan_fraction > 0:
        Z[rng.random(Z.shape) < nan_fraction] = np.nan
    return Planted(Z.astype(np.float32), signal.astype(np.float32), blocks, seed)
