"""Completion for a stream of new tasks: fit once on a matrix, fold new rows in, append measured rows.

    >>> c = Completer(Z, method="mf")                 # one fit of Z [M, N]
    >>> rows = c.fold_in(z_new, revealed)             # [P, N] predicted rows, no refit
    >>> c.append(z_measured, measured)                # Z grows to [M + P, N]; the fit is redone

``fold_in`` is :func:`jaxforget.completion.complete_rows` with ``mode="fold_in"`` and the kept fit,
so a stream of rows is predicted exactly as the protocol's fold-in mode predicts them, one
compilation per row-batch shape. What folding in leaves out is the refit's update of the model from
the new row's own entries. ``FOLD_IN_TOLERANCE`` states, per method, how far a folded-in row may be
from the protocol's refit of (train rows + that row) -- RMS over the row, at the protocol's
defaults, on a planted 40 x 300 matrix with k = 30 (``tests/completion/test_stream.py``; measured:
additive 1.0e-3, knn 7e-9, knn_baseline 8e-5, mf 9e-3). ``soft_impute`` and ``svd`` have no bound:
their fold-in is a ridge / least-squares solve against the fitted column factors, another estimator
than their refit (SoftImpute's shrunk SVD, surprise's SGD); measured RMS 0.21 and 0.14 there.

``append`` re-fits on the grown matrix. ``additive`` and ``mf`` (ALS) start from the current fit
(row offsets, resp. column factors and offsets: ``init=`` of their cores), so the appended rows
refine the model instead of restarting it; the other methods refit from scratch. Either way it is
one compilation per matrix shape.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxforget.completion._common import prepare
from jaxforget.completion.additive import AdditiveFit
from jaxforget.completion.protocol import complete_rows, fit_method
from jaxforget.completion.registry import Method

WARM_STARTED = ("additive", "mf")
FOLD_IN_TOLERANCE = {"additive": 2e-3, "knn": 1e-6, "knn_baseline": 3e-4, "mf": 2e-2}
"""Bound on the RMS difference between a folded-in row and the refit row (see module docstring)."""


class Completer:
    """A completion method fitted on a matrix, for new rows arriving one batch at a time.

    Args:
      Z: ``float[M, N]``, NaN (or ``mask`` False) = not measured.
      method: a registered method (``"mf"``, ``"knn_baseline:k=20"``, ...), protocol defaults.
      seed: the fit's seed (initial factors).
      clip: clip predictions to the range of the observed entries.
    """

    def __init__(self, Z: Any, mask: Any | None = None, *, method: str | Method = "mf", seed: int = 0,
                 clip: bool = False):
        self.method = method if isinstance(method, Method) else Method.parse(method)
        Z0, m = prepare(Z, mask)
        self._Z, self._mask = np.asarray(Z0), np.asarray(m)
        self.seed, self.clip = int(seed), bool(clip)
        self.fit = fit_method(Z0, self.method, mask_train=m, seed=self.seed)
        self.warm_starts = 0  # appends that refined the previous fit instead of refitting from scratch

    @property
    def shape(self) -> tuple[int, int]:
        return self._Z.shape

    @property
    def Z(self) -> np.ndarray:
        """The fitted matrix, NaN where not measured."""
        return np.where(self._mask, self._Z, np.nan)

    def predict(self) -> np.ndarray:
        """``[M, N]`` predictions for the fitted rows (logits for logistic methods)."""
        return np.asarray(self.fit.predict())

    def fold_in(self, z_rows: Any, revealed: Any) -> np.ndarray:
        """Predicted rows ``[P, N]`` (or ``[N]`` for one row) from their revealed entries, without
        refitting (``complete_rows(..., mode="fold_in", fitted=self.fit)``)."""
        z, rev = np.asarray(z_rows, np.float32), np.asarray(revealed, bool)
        one = z.ndim == 1
        out = complete_rows(self._Z, z[None] if one else z, rev[None] if one else rev, method=self.method,
                            mask_train=self._mask, mode="fold_in", clip=self.clip, fitted=self.fit)
        return out[0] if one else out

    def append(self, z_rows: Any, mask_rows: Any | None = None) -> None:
        """Add measured rows ``[P, N]`` (NaN or ``mask_rows`` False = not measured) and re-fit."""
        z = np.atleast_2d(np.asarray(z_rows, np.float32))
        if z.shape[1:] != self._Z.shape[1:]:
            raise ValueError(f"append: rows of shape {z.shape}; the matrix has {self._Z.shape[1]} columns")
        m = np.isfinite(z) if mask_rows is None else np.atleast_2d(np.asarray(mask_rows, bool))
        if m.shape != z.shape:
            raise ValueError(f"append: mask_rows {m.shape} does not match z_rows {z.shape}")
        Z0, mask = prepare(np.concatenate([self._Z, z]), np.concatenate([self._mask, m]))
        init = self._warm_start(z.shape[0])
        self.fit = fit_method(Z0, self.method, mask_train=mask, seed=self.seed, init=init)
        self._Z, self._mask = np.asarray(Z0), np.asarray(mask)
        self.warm_starts += init is not None

    def _warm_start(self, n_new: int) -> Any | None:
        if self.method.name not in WARM_STARTED or self.method.resolved.get("method", "als") != "als":
            return None
        if isinstance(self.fit, AdditiveFit):  # ALS reads b_row first: new rows start at 0
            return AdditiveFit(self.fit.mu, jnp.concatenate([self.fit.b_row, jnp.zeros(n_new, self.fit.b_row.dtype)]),
                               self.fit.b_col, self.fit.reg_row)
        return self.fit  # low-rank ALS reads only the column side (Q, b_col), whose shape does not change
