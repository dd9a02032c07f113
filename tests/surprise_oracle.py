"""Build scikit-surprise trainsets straight from ``(Z, mask)`` so that inner ids equal our indices.

Rows are surprise's users and columns its items, as in the paper's reference code (tasks are users,
upstream examples are items). Ratings are inserted row by row, column by column, which is also the
order surprise's ``yr`` lists and its neighbour tie-breaking follow.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

surprise = pytest.importorskip("surprise")


def trainset(Z: np.ndarray, mask: np.ndarray, rating_scale: tuple[float, float] = (-100.0, 100.0)):
    M, N = Z.shape
    ur, ir = defaultdict(list), defaultdict(list)
    n = 0
    for i in range(M):
        for j in range(N):
            if mask[i, j]:
                ur[i].append((j, float(Z[i, j])))
                ir[j].append((i, float(Z[i, j])))
                n += 1
    return surprise.Trainset(
        ur, ir, M, N, n, rating_scale, {i: i for i in range(M)}, {j: j for j in range(N)}
    )


def predict_matrix(algo, M: int, N: int) -> np.ndarray:
    """Unclipped surprise predictions for every (row, column) as an ``[M, N]`` array."""
    return np.array([[algo.predict(i, j, clip=False).est for j in range(N)] for i in range(M)])
