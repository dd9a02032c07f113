"""Input validation and small masked-array helpers shared by every solver.

Conventions used throughout ``jaxforget.completion``:

* ``Z: float[M, N]`` is the matrix (rows = tasks, columns = upstream examples) and
  ``mask: bool[M, N]`` marks observed entries. Hidden entries may hold anything (NaN, garbage);
  every solver first replaces them by zero and weights its objective by the mask, so a hidden
  entry can never influence a fit.
* Public functions validate on the host side once (one device->host transfer of a few booleans),
  then call a jitted core that works on ``(Z0, W)``: ``Z0`` with hidden entries zeroed and ``W`` the
  mask as a float weight. The cores are what the protocol vmaps over many problems.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Matrix products in the solvers are reductions over up to ~1e5 examples; on GPU/TPU the default
# float32 matmul precision is reduced (TF32/bf16 passes), which is visible at the 1e-6 level of the
# parity tests. Completion problems are tiny next to model training, so always ask for full precision.
HIGHEST = jax.lax.Precision.HIGHEST


def mm(a: Array, b: Array) -> Array:
    """Matrix product at full float32 precision on every backend."""
    return jnp.matmul(a, b, precision=HIGHEST)


def einsum(spec: str, *operands: Array) -> Array:
    """``jnp.einsum`` at full float32 precision on every backend."""
    return jnp.einsum(spec, *operands, precision=HIGHEST)


def as_float(x: Any) -> Array:
    """Float array on the default device; float64 stays float64 only when x64 is enabled."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def prepare(Z: Any, mask: Any | None = None, *, name: str = "Z") -> tuple[Array, Array]:
    """Validate ``(Z, mask)`` and return ``(Z0, mask)`` with hidden entries set to zero.

    ``mask=None`` means "observed where Z is finite". Raises ``ValueError`` naming the problem:
    wrong rank, shape mismatch, a non-finite observed entry (with its position), or a row without
    any observed entry (with its index).
    """
    Z = as_float(Z)
    if Z.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (tasks x examples); got shape {Z.shape}")
    if mask is None:
        mask = jnp.isfinite(Z)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != Z.shape:
            raise ValueError(f"mask shape {mask.shape} does not match {name} shape {Z.shape}")
        if mask.dtype != jnp.bool_:
            if not bool(jnp.all((mask == 0) | (mask == 1))):
                raise ValueError("mask must be boolean (or 0/1); it holds other values")
            mask = mask.astype(jnp.bool_)
    bad_obs = mask & ~jnp.isfinite(Z)
    empty_rows = ~jnp.any(mask, axis=1)
    any_bad, any_empty = jax.device_get((jnp.any(bad_obs), jnp.any(empty_rows)))
    if any_bad:
        i, j = (int(v) for v in np.argwhere(np.asarray(bad_obs))[0])
        n_bad = int(jnp.sum(bad_obs))
        raise ValueError(
            f"{name}[{i}, {j}] is observed (mask True) but not finite ({float(Z[i, j])}); "
            f"{n_bad} observed entries are NaN/inf. Mark them hidden in the mask or fix the data."
        )
    if any_empty:
        rows = np.flatnonzero(np.asarray(empty_rows))
        shown = ", ".join(str(int(r)) for r in rows[:10]) + (" ..." if rows.size > 10 else "")
        raise ValueError(
            f"{name} has {rows.size} row(s) without any observed entry (rows {shown}); "
            "a row needs at least one observed entry to be fitted"
        )
    return jnp.where(mask, Z, 0.0), mask


def zero_hidden(Z: Array, mask: Array) -> tuple[Array, Array]:
    """Inside jitted cores: hidden entries -> 0 and the mask as a float weight matrix."""
    W = mask.astype(Z.dtype)
    return jnp.where(mask, Z, jnp.zeros((), Z.dtype)), W


def global_mean(Z0: Array, W: Array) -> Array:
    """Mean of the observed entries (surprise's ``trainset.global_mean``)."""
    return jnp.sum(Z0) / jnp.maximum(jnp.sum(W), 1.0)


def check_choice(field: str, value: str, choices: Iterable[str]) -> None:
    """ValueError naming the field and the valid values when ``value`` is not one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(map(repr, choices))}")


def check_options(where: str, options: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """ValueError listing unknown option names (no option is ever silently ignored)."""
    allowed = tuple(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {where}; "
            f"valid options: {', '.join(sorted(allowed))}"
        )
