"""Statistical analysis of a forgetting matrix ``Z: float[M, N]`` (tasks x upstream examples).

The numerics behind ``python -m jaxforget.analyze``; every function takes host arrays (NaN = not
measured, or an explicit ``mask``) and runs jitted JAX, mostly through :mod:`jaxforget.completion`:

* :func:`goodness` -- R^2 of row mean, column mean, additive (ridge and exact), multiplicative and rank
  1..k fits, plus the counts of observed / missing entries and the moments of Z.
* ``rank_fit`` (re-exported from completion) and :func:`components` -- the rank-k fit used for reconstructions and residuals,
  and its components ordered by singular value (orthogonal, signs fixed).
* :func:`correlation` / :func:`correlate_effects` -- Pearson and Spearman correlations with two-sided
  p-values (t distribution with n - 2 degrees of freedom, as scipy.stats computes them) of the task
  effect alpha with task statistics and of the example effect beta with example statistics.
* :func:`find_blocks` -- sets of tasks x examples whose residual after the low-rank fit stays large,
  each with a permutation p-value (the fit is redone without each block found);
  :func:`domain_enrichment` -- the two-proportion z-test of an upstream domain among a block's examples.
* :func:`r2_over_steps` -- R^2 of the rank-1 fit at each measured step of a ``[M, T, N]`` tensor.
* :func:`paired_test` (paired t and sign-flip tests, t interval of the mean difference),
  :func:`paired_power` and :func:`paired_sample_size` (pairs needed for a given power) -- replay's comparisons.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, ndtr

from jaxforget import completion
from jaxforget.completion import LOW_RANK_ITERS, LOW_RANK_REG, LowRankFit, prepare, rank_fit
from jaxforget.completion import mm

Array = jax.Array

# Rank-k fits are completion.rank_fit, with the settings of completion.fit_table, so that the
# reconstructions and residuals shown are the fits whose R^2 the table reports.

# ----------------------------------------------------------------------------------------------
# Goodness of fit


ADDITIVE_REG = (15.0, 10.0)
"""Ridge terms (task, example) of the table's additive fit: the paper's, as completion.fit_table's defaults."""

R2_LABELS = {
    "row_mean": "row mean only",
    "col_mean": "column mean only",
    # A ridge fit, not least squares: with few tasks it can explain less than the column means alone.
    "additive": f"additive (ridge ALS, λ {ADDITIVE_REG[0]:g}/{ADDITIVE_REG[1]:g})",
    "additive_exact": "additive (exact least squares)",
    "multiplicative": "multiplicative (α_i β_j, rank 1)",
}
"""How the R² table, its figure and the report name the rows of :func:`goodness`; other keys
(``rank_<k>``, rows a later fit_table adds) are shown with underscores as spaces."""


def r2_label(key: str) -> str:
    """The display name of an R² table row (:data:`R2_LABELS`)."""
    return R2_LABELS.get(key, key.replace("_", " "))


def goodness(Z: Any, mask: Any | None = None, *, max_rank: int = 5, seed: int = 0) -> dict[str, Any]:
    """The R^2 table and the counts behind it.

    Returns ``{"r2": {row_mean, col_mean, additive (ridge ALS), additive_exact (least squares), multiplicative,
    rank_1..rank_k}, "counts": {...},
    "moments": {...}}`` with ``k = min(max_rank, M, N)``. R^2 pools all observed entries (NaN entries
    are ignored by every fit and counted in ``counts``). Raises ValueError naming a row without any
    observed entry (:func:`jaxforget.completion.prepare`).
    """
    Z0, mask = prepare(Z, mask)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1; got {max_rank}")
    k = min(max_rank, *Z0.shape)
    table = completion.fit_table(Z0, mask, ranks=tuple(range(1, k + 1)), seed=seed, reg_row=ADDITIVE_REG[0],
                                 reg_col=ADDITIVE_REG[1], low_rank_reg=LOW_RANK_REG, low_rank_iters=LOW_RANK_ITERS)
    return dict(r2=table, counts=counts(mask), moments=moments(Z0, mask),
                method="truncated_svd" if bool(jnp.all(mask)) else "masked_als")


def counts(mask: Any) -> dict[str, int]:
    """Observed / missing entries and the rows and columns that have missing entries."""
    m = np.asarray(mask, bool)
    return dict(
        n_tasks=int(m.shape[0]), n_examples=int(m.shape[1]), n_entries=int(m.size),
        n_observed=int(m.sum()), n_missing=int((~m).sum()),
        rows_with_missing=int((~m).any(axis=1).sum()), cols_with_missing=int((~m).any(axis=0).sum()),
        empty_cols=int((~m).all(axis=0).sum()),
    )


@jax.jit
def _moments(Z0: Array, mask: Array) -> dict[str, Array]:
    w = mask.astype(Z0.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(Z0) / n
    std = jnp.sqrt(jnp.sum(w * (Z0 - mean) ** 2) / n)
    return dict(mean=mean, std=std, frac_nonneg=jnp.sum(w * (Z0 >= 0)) / n,
                min=jnp.min(jnp.where(mask, Z0, jnp.inf)), max=jnp.max(jnp.where(mask, Z0, -jnp.inf)))


def moments(Z0: Any, mask: Any) -> dict[str, float]:
    """Mean, standard deviation, fraction >= 0, min and max of the observed entries."""
    return {k: float(v) for k, v in _moments(jnp.asarray(Z0), jnp.asarray(mask, bool)).items()}


# ----------------------------------------------------------------------------------------------
# Low-rank fits and their components


@jax.jit
def _factor_svd(P: Array, Q: Array) -> tuple[Array, Array, Array]:
    # P Q^T = (Qp Rp)(Qq Rq)^T = Qp (Rp Rq^T) Qq^T: the SVD of the small k x k core gives the SVD of
    # the [M, N] product without forming it.
    Qp, Rp = jnp.linalg.qr(P)
    Qq, Rq = jnp.linalg.qr(Q)
    u, s, vt = jnp.linalg.svd(mm(Rp, Rq.T))
    U, V = mm(Qp, u), mm(Qq, vt.T)
    sign = jnp.where(jnp.sum(V, axis=0) < 0, -1.0, 1.0).astype(V.dtype)  # each example effect sums >= 0
    return U * sign, s, V * sign


def components(fit: LowRankFit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U [M, k], s [k], V [N, k])`` with ``fit.P @ fit.Q.T == U diag(s) V^T``, ``s`` descending,
    U and V with orthonormal columns and ``sum(V[:, r]) >= 0``. Component r is ``s[r] U[:, r] V[:, r]^T``.

    A masked ALS fit's factors are neither orthogonal nor ordered; this makes them comparable with
    the SVD of a fully observed matrix.
    """
    U, s, V = _factor_svd(fit.P, fit.Q)
    return np.asarray(U), np.asarray(s), np.asarray(V)


def effect_order(alpha: Any, beta: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row and column orders by decreasing task effect ``alpha [M]`` and example effect ``beta [N]``
    (stable, so ties keep the file's order)."""
    return (np.argsort(-np.asarray(alpha), kind="stable"), np.argsort(-np.asarray(beta), kind="stable"))


# ----------------------------------------------------------------------------------------------
# Correlations


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of two variables over the ``n`` pairs where both are finite.
    p-values are two-sided; all NaN when ``n < 3`` or a variable is constant."""

    n: int
    pearson: float
    pearson_p: float
    spearman: float
    spearman_p: float

    def to_json(self) -> dict[str, float | int | None]:
        return {k: _num(v) for k, v in dataclasses.asdict(self).items()}


def _num(v: Any) -> float | int | None:
    """JSON-safe number: NaN and inf become null."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if np.isfinite(v) else None


def _midranks(x: Array, valid: Array) -> Array:
    """1-based ranks among the valid entries, ties sharing their mean rank (as scipy.stats.rankdata)."""
    s = jnp.where(valid, x, jnp.inf)
    ordered = jnp.sort(s)  # invalid entries sort last as +inf and never tie with a valid value
    lo = jnp.searchsorted(ordered, s, side="left")
    hi = jnp.searchsorted(ordered, s, side="right")
    return (lo + hi + 1) / 2.0


def _pearson(x: Array, y: Array, w: Array) -> tuple[Array, Array]:
    n = jnp.sum(w)
    xc = x - jnp.sum(w * x) / n
    yc = y - jnp.sum(w * y) / n
    r = jnp.sum(w * xc * yc) / jnp.sqrt(jnp.sum(w * xc**2) * jnp.sum(w * yc**2))
    r = jnp.clip(r, -1.0, 1.0)
    df = n - 2
    # Two-sided p of t = r sqrt(df / (1 - r^2)) with df degrees of freedom: P(|T| > |t|) is the
    # regularised incomplete beta I_{df/(df+t^2)}(df/2, 1/2), and df/(df+t^2) = (1-r)(1+r).
    p = betainc(df / 2, 0.5, (1 - r) * (1 + r))
    p = jnp.where(df > 0, p, jnp.nan)
    return r, p


@jax.jit
def _correlation(x: Array, y: Array) -> tuple[Array, ...]:
    valid = jnp.isfinite(x) & jnp.isfinite(y)
    w = valid.astype(x.dtype)
    x0, y0 = jnp.where(valid, x, 0.0), jnp.where(valid, y, 0.0)
    r, p = _pearson(x0, y0, w)
    rho, p_s = _pearson(_midranks(x, valid), _midranks(y, valid), w)
    return jnp.sum(valid), r, p, rho, p_s


def correlation(x: Any, y: Any) -> Correlation:
    """Pearson ``r`` and Spearman ``rho`` of ``x [n]`` and ``y [n]`` with two-sided p-values, over the
    pairs where both are finite. Spearman's p uses the same t approximation as scipy.stats.spearmanr.

    Computed in float64 (a scoped ``jax.enable_x64``): in float32, ``1 - r^2`` is too coarse for
    the p-value of a weak correlation over 1e5 examples.
    """
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlation needs two variables of one length; got {x.size} and {y.size}")
    with jax.enable_x64(True):
        n, r, p, rho, p_s = jax.device_get(_correlation(jnp.asarray(x), jnp.asarray(y)))
    if n < 3 or not np.isfinite(r):
        r = p = rho = p_s = np.nan
    return Correlation(int(n), float(r), float(p), float(rho), float(p_s))


def correlate_effects(effect: Any, statistics: Mapping[str, Sequence[Any]], *, effect_name: str) -> list[dict]:
    """Correlate an effect vector (``alpha [M]`` or ``beta [N]``) with each statistic.

    Numeric statistics (None = unknown) give one row each; a categorical statistic (strings, e.g. the
    domain) gives one row per level, correlating the effect with the level's 0/1 indicator (the
    point-biserial correlation). Rows: ``{"effect", "statistic", "level", "n", "pearson", ...}``.
    """
    effect = np.asarray(effect, np.float64)
    rows = []
    for name, values in statistics.items():
        values = list(values)
        if len(values) != effect.size:
            raise ValueError(f"statistic {name!r} has {len(values)} values for {effect.size} {effect_name} entries")
        known = [v for v in values if v is not None]
        if known and all(isinstance(v, str) for v in known):
            for level in sorted(set(known)):
                indicator = np.array([np.nan if v is None else float(v == level) for v in values])
                rows.append(dict(effect=effect_name, statistic=name, level=level,
                                 **correlation(effect, indicator).to_json()))
        else:
            try:
                numeric = np.array([np.nan if v is None else float(v) for v in values])
            except (TypeError, ValueError):
                raise ValueError(f"statistic {name!r} mixes numbers and non-numbers") from None
            rows.append(dict(effect=effect_name, statistic=name, level=None,
                             **correlation(effect, numeric).to_json()))
    return rows


# ----------------------------------------------------------------------------------------------
# Residual blocks


@dataclasses.dataclass(frozen=True)
class Block:
    """A set of tasks x examples whose residual stays large after the low-rank fit.

    ``score = sign * sum(R[rows x cols]) / sqrt(|rows| |cols|)`` (units of Z); ``mean_residual`` is
    the mean residual over the block's observed entries; ``p_value`` the permutation p-value of the
    score against the largest block score found in residuals with each row randomly rotated.
    """

    rows: np.ndarray  # [|rows|] task indices, ascending
    cols: np.ndarray  # [|cols|] example indices, ascending
    sign: int  # +1: more forgetting than the fit predicts; -1: less
    score: float
    mean_residual: float
    n_observed: int
    p_value: float


@dataclasses.dataclass(frozen=True)
class BlockSearch:
    """Result of :func:`find_blocks`: the significant blocks in the order found, and the null."""

    blocks: list[Block]
    threshold: float  # largest null score; a block must score above it (p <= alpha)
    null_scores: np.ndarray  # [n_permutations]
    seed: int
    residual: np.ndarray  # [M, N] Z minus the last fit (without the blocks' entries); NaN where hidden


def _best_subset(scores: Array, k_min: int, k_max: int) -> Array:
    """The subset S of indices maximising ``sum(scores[S]) / sqrt(|S|)`` with ``k_min <= |S| <= k_max``.

    For a fixed size the best subset holds the largest scores, so it is a prefix of the sorted
    scores: one sort, one cumulative sum. Returns a boolean mask.
    """
    n = scores.shape[0]
    order = jnp.argsort(-scores)
    k = jnp.arange(1, n + 1)
    objective = jnp.cumsum(scores[order]) / jnp.sqrt(k.astype(scores.dtype))
    objective = jnp.where((k >= k_min) & (k <= k_max), objective, -jnp.inf)
    size = jnp.argmax(objective) + 1
    return jnp.zeros(n, bool).at[order].set(k <= size)


def _score(R: Array, rows: Array, cols: Array) -> Array:
    r, c = rows.astype(R.dtype), cols.astype(R.dtype)
    return mm(mm(r, R), c) / jnp.sqrt(jnp.sum(r) * jnp.sum(c))


@partial(jax.jit, static_argnames=("n_starts", "n_iters", "row_range", "col_range"))
def _search(R: Array, *, n_starts: int, n_iters: int, row_range: tuple[int, int],
            col_range: tuple[int, int]) -> tuple[Array, Array, Array, Array]:
    """The block (rows, cols, sign) with the largest score, by alternating exact maximisation.

    Given the rows, the best columns maximise ``sum_j c_j / sqrt|J|`` with ``c_j = sum_rows R[:, j]``
    (:func:`_best_subset`), and symmetrically; each step can only raise the score, so a few
    iterations converge. Starts: the leading ``n_starts`` left singular vectors of R.
    """
    # Leading singular vectors from the small Gram matrix: [M, M] when M <= N (the usual case).
    if R.shape[0] <= R.shape[1]:
        _, U = jnp.linalg.eigh(mm(R, R.T))
        U = U[:, ::-1][:, :n_starts]
    else:
        _, V = jnp.linalg.eigh(mm(R.T, R))
        U = mm(R, V[:, ::-1][:, :n_starts])

    def run(u: Array, sign: Array):
        S = sign * R
        rows = _best_subset(u, *row_range)

        def step(carry):
            it, rows, _, _ = carry
            cols = _best_subset(mm(rows.astype(R.dtype), S), *col_range)
            new_rows = _best_subset(mm(S, cols.astype(R.dtype)), *row_range)
            return it + 1, new_rows, cols, jnp.any(new_rows != rows)

        def not_done(carry):
            it, _, _, changed = carry
            return changed & (it < n_iters)

        init = (jnp.zeros((), jnp.int32), rows, jnp.zeros(R.shape[1], bool), jnp.ones((), bool))
        _, rows, cols, _ = jax.lax.while_loop(not_done, step, init)
        return rows, cols, _score(S, rows, cols)

    # A singular vector's sign is arbitrary and a block may be positive or negative: every vector
    # starts with both signs, each searched in R and in -R.
    starts = jnp.concatenate([U.T, -U.T]).repeat(2, axis=0)  # [4 * n_starts, M]
    signs = jnp.tile(jnp.array([1.0, -1.0], R.dtype), 2 * U.shape[1])
    rows, cols, scores = jax.vmap(run)(starts, signs)
    best = jnp.argmax(scores)
    return rows[best], cols[best], scores[best], signs[best]


@jax.jit
def _shuffle_rows(R: Array, key: Array) -> Array:
    """R with each row rotated by its own random offset: keeps every task's residual distribution and
    misaligns the tasks' columns, which destroys any block. The null of :func:`find_blocks`.

    A rotation is a permutation, so the test stays a permutation test; it is a gather, where a full
    random permutation per row would be a sort of the whole matrix (10x slower on CPU at N = 2e4).
    """
    M, N = R.shape
    shifts = jax.random.randint(key, (M, 1), 0, N)
    return jnp.take_along_axis(R, (jnp.arange(N)[None, :] + shifts) % N, axis=1)


@jax.jit
def _rotate_measured(R: Array, order: Array, rank: Array, n_obs: Array, key: Array) -> Array:
    """R with each row's measured entries rotated among themselves by a random offset, the hidden
    entries staying where they are: :func:`_shuffle_rows` for a matrix with hidden entries. ``order [M, N]``
    lists each row's measured columns first (ascending), ``rank [M, N]`` is its inverse and ``n_obs [M, 1]``
    the row's measured count. Keeping the mask matters where whole columns are measured for every task
    (a budgeted run's anchors): a plain rotation scatters their entries over the row, so the null never
    sees columns that dense, and noise on them comes out significant (rank-1 Z plus noise, 30 x 300, 10%
    measured plus 30 anchor columns: 14 of 20 matrices gave the first block p = 0.05, the floor of 19
    permutations, mostly on anchor columns; with this null 1 of 20)."""
    M, _ = R.shape
    shifts = jax.random.randint(key, (M, 1), 0, n_obs)
    src = jnp.take_along_axis(order, (rank + shifts) % n_obs, axis=1)
    return jnp.where(rank < n_obs, jnp.take_along_axis(R, src, axis=1), 0.0)


def find_blocks(
    Z: Any,
    mask: Any | None = None,
    *,
    rank: int = 1,
    max_blocks: int = 5,
    n_permutations: int = 19,
    alpha: float = 0.05,
    min_rows: int = 2,
    min_cols: int = 2,
    max_row_frac: float = 0.5,
    max_col_frac: float = 0.5,
    n_starts: int = 3,
    n_iters: int = 20,
    seed: int = 0,
) -> BlockSearch:
    """Blocks of tasks x examples of ``Z [M, N]`` whose residual after a rank-``rank`` fit stays large.

    Repeatedly: find the block with the largest score ``sum(R[I x J]) / sqrt(|I| |J|)`` of the residual
    R (either sign) with ``min_rows <= |I| <= max_row_frac * M`` and ``min_cols <= |J| <= max_col_frac * N``;
    keep it when its permutation p-value (``(1 + #null scores >= score) / (1 + n_permutations)``) is at
    most ``alpha``; then hide the block's entries, refit the low-rank model without them and search the
    new residual (blocks found are left out), up to ``max_blocks``. The refit matters: a rank-r fit
    partly absorbs a block and leaves its negative "shadow" in the block's columns on the other tasks,
    which would otherwise be reported as a second block.

    The null scores are those of the first search on ``n_permutations`` copies of the first residual
    with each row rotated by a random offset (drawn from ``seed``), so pure noise yields no block with
    probability about ``1 - alpha``. Hidden entries (``mask`` False, or NaN) count as zero residual and
    stay in place in the null: each row's measured entries are rotated among themselves.
    """
    Z0, mask = prepare(Z, mask)
    M, N = Z0.shape
    row_range = (min_rows, max(min_rows, int(max_row_frac * M)))
    col_range = (min_cols, max(min_cols, int(max_col_frac * N)))
    if row_range[0] > M or col_range[0] > N:
        raise ValueError(f"min_rows={min_rows} / min_cols={min_cols} exceed the matrix shape {(M, N)}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1; got {n_permutations}")
    if not 1.0 / (n_permutations + 1) <= alpha <= 1:
        raise ValueError(f"alpha={alpha} is below the smallest permutation p-value 1/(1 + n_permutations) = "
                         f"{1 / (n_permutations + 1):.3g}; raise n_permutations")
    opts = dict(n_starts=min(n_starts, M, N), n_iters=n_iters, row_range=row_range, col_range=col_range)
    fit = rank_fit(Z0, mask, rank=rank, seed=seed)
    R = jnp.where(mask, Z0 - fit.predict(), 0.0)
    # One compiled search reused for every shuffled copy (a vmapped or lax.map'ed null would compile
    # the search a second time, which costs more than it saves at these sizes).
    keys = jax.random.split(jax.random.key(seed), n_permutations)
    if bool(jnp.all(mask)):
        shuffle = _shuffle_rows
    else:
        order = jnp.argsort(~mask, axis=1, stable=True)
        rank_in_row = jnp.argsort(order, axis=1)
        n_obs = jnp.sum(mask, axis=1, keepdims=True)
        shuffle = partial(_rotate_measured, order=order, rank=rank_in_row, n_obs=n_obs)
    null = np.array([float(_search(shuffle(R, key=k), **opts)[2]) for k in keys])
    blocks = []
    outside = mask  # observed entries not in any block found so far
    for _ in range(max_blocks):
        rows, cols, score, sign = jax.device_get(_search(R, **opts))
        p = (1 + int(np.sum(null >= score))) / (1 + n_permutations)
        if p > alpha:
            break
        in_block = jnp.outer(jnp.asarray(rows), jnp.asarray(cols))
        observed = in_block & mask
        n_obs = int(jnp.sum(observed))
        mean = float(jnp.sum(jnp.where(observed, R, 0.0)) / max(n_obs, 1))
        blocks.append(Block(np.flatnonzero(rows), np.flatnonzero(cols), int(sign), float(score), mean, n_obs, p))
        outside = outside & ~in_block
        fit = fit_block_free(Z0, outside, rank=rank, seed=seed)
        R = jnp.where(outside, Z0 - fit.predict(), 0.0)
    final = np.where(np.asarray(mask), np.asarray(Z0 - fit.predict()), np.nan)
    return BlockSearch(blocks, float(null.max()), null, seed, final)


def fit_block_free(Z0: Array, outside: Array, *, rank: int, seed: int) -> LowRankFit:
    """Rank-``rank`` masked fit on the entries outside the blocks (a block's rows keep their other
    entries, so no row goes empty while blocks cover at most half the columns)."""
    return completion.fit_low_rank(Z0, outside, rank=rank, biased=False, reg=LOW_RANK_REG, reg_bias=0.0,
                                   n_iters=LOW_RANK_ITERS, seed=seed)


def domain_enrichment(in_block: Any, domains: Sequence[str | None]) -> list[dict[str, Any]]:
    """Two-proportion z-test of each domain's share among a block's examples against the other examples.

    ``in_block: bool[N]``; ``domains[j]`` the domain of example j (None = unknown, left out).
    Rows, most over-represented first: ``{domain, n_block, frac_block, frac_rest, z, p}`` with the
    one-sided p-value of over-representation (pooled-variance z statistic, as in the paper).
    """
    in_block = np.asarray(in_block, bool)
    known = np.array([d is not None for d in domains])
    levels = sorted({d for d in domains if d is not None})
    if not levels:
        return []
    onehot = np.array([[d == level for level in levels] for d in domains], np.float32)  # [N, L]
    z, p, n1, f1, f2 = jax.device_get(_two_proportion(jnp.asarray(onehot), jnp.asarray(in_block & known),
                                                      jnp.asarray(~in_block & known)))
    rows = [dict(domain=level, n_block=int(round(n1[i])), frac_block=_num(f1[i]), frac_rest=_num(f2[i]),
                 z=_num(z[i]), p=_num(p[i])) for i, level in enumerate(levels)]
    return sorted(rows, key=lambda r: -(r["z"] if r["z"] is not None else -np.inf))


@jax.jit
def _two_proportion(onehot: Array, a: Array, b: Array) -> tuple[Array, ...]:
    n_a, n_b = jnp.sum(a), jnp.sum(b)
    x_a = mm(a.astype(onehot.dtype), onehot)  # [L] count of each domain in the block
    x_b = mm(b.astype(onehot.dtype), onehot)
    p_a, p_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    z = (p_a - p_b) / jnp.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return z, ndtr(-z), x_a, p_a, p_b  # ndtr(-z), not 1 - ndtr(z): keeps small p-values in float32


# ----------------------------------------------------------------------------------------------
# Forgetting over time


@jax.jit
def _rank1_r2_full(Z_t: Array) -> Array:
    return jax.vmap(lambda Z: completion.r2(Z, completion.fit_truncated_svd(Z, rank=1).predict()))(Z_t)


def r2_over_steps(Z_steps: Any, steps: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """For each step t of ``Z_steps [M, T, N]`` (NaN = not measured): R^2 of the multiplicative
    (rank-1) fit of ``Z_steps[:, t, :]``, the mean forgetting and the number of observed entries.

    R^2 is null where the step's observed entries are constant (e.g. all zero at step 0). Fully
    observed tensors are fitted in one vmapped program; otherwise one masked fit per step.
    """
    Zs = np.asarray(Z_steps, np.float32)
    if Zs.ndim != 3:
        raise ValueError(f"Z_steps must be [tasks, steps, examples]; got shape {Zs.shape}")
    steps = list(range(Zs.shape[1])) if steps is None else [int(s) for s in steps]
    if len(steps) != Zs.shape[1]:
        raise ValueError(f"steps has {len(steps)} entries for Z_steps with {Zs.shape[1]} steps")
    Z_t = np.moveaxis(Zs, 1, 0)  # [T, M, N]
    finite = np.isfinite(Z_t)
    if finite.all():
        r2s = np.asarray(_rank1_r2_full(jnp.asarray(Z_t)))
    else:
        r2s = []
        for t, Z in enumerate(Z_t):
            rows = finite[t].any(axis=1)  # tasks stopped early by an epoch cap have no entry at later steps
            if not rows.any():
                r2s.append(float("nan"))
                continue
            try:
                fit = completion.multiplicative(Z[rows])
            except ValueError as e:
                raise ValueError(f"Z_steps at step {steps[t]} (index {t}): {e}") from None
            r2s.append(float(completion.r2(np.nan_to_num(Z[rows]), fit.predict(), finite[t][rows])))
    out = []
    for t, step in enumerate(steps):
        obs = Z_t[t][finite[t]]
        out.append(dict(step=step, r2_rank1=_num(r2s[t]) if obs.size and np.ptp(obs) > 0 else None,
                        mean=_num(obs.mean()) if obs.size else None, n_observed=int(obs.size)))
    return out


# ------------------------------------------------------------------------------------------------
# paired comparisons (replay: strategy vs baseline across tasks and seeds)


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """``x - y`` over paired observations: mean difference, paired t-test and sign-flip permutation test,
    and the t confidence interval of the mean difference."""

    n: int
    mean_diff: float
    t: float
    p_t: float
    """Two-sided p of the paired t-test (= scipy.stats.ttest_rel)."""
    p_perm: float
    """Two-sided p of the sign-flip permutation test of the mean difference: exact (all 2^n sign
    patterns) for n <= 16, else Monte Carlo with ``n_permutations`` seeded draws, (count + 1) / (draws + 1)."""
    sd_diff: float = np.nan
    """Sample standard deviation (ddof 1) of the differences; NaN for n < 2."""
    ci_low: float = np.nan
    """Lower end of the ``confidence`` (default 95%) t interval of the mean difference:
    mean -+ t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n); NaN for n < 2."""
    ci_high: float = np.nan

    def to_json(self) -> dict[str, float | int | None]:
        return {k: _num(v) for k, v in dataclasses.asdict(self).items()}


def paired_test(x: Any, y: Any, *, n_permutations: int = 10_000, seed: int = 0,
                confidence: float = 0.95) -> PairedTest:
    """Is ``x`` different from ``y`` pair by pair? Pairs with a non-finite member are dropped."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired_test needs two samples of one length; got {x.size} and {y.size}")
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    n = d.size
    if n == 0:
        return PairedTest(0, np.nan, np.nan, np.nan, np.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedTest(n, mean, np.nan, np.nan, np.nan)
    sd = float(d.std(ddof=1))
    df = n - 1
    if sd == 0:
        t, p_t = (0.0, 1.0) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0)
    else:
        t = mean / (sd / np.sqrt(n))
        with jax.enable_x64(True):  # P(|T_df| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)
            p_t = float(betainc(jnp.float64(df / 2), jnp.float64(0.5), jnp.float64(df / (df + t * t))))
    if n <= 16:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # every sign pattern
        count, draws = int(np.sum(np.abs(signs @ d) >= abs(d.sum()) * (1 - 1e-12))), 2**n
        p_perm = count / draws
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_permutations, n))
        count = int(np.sum(np.abs(signs @ d) >= abs(d.sum()) * (1 - 1e-12)))
        p_perm = (count + 1) / (n_permutations + 1)
    low, high = mean_interval(mean, sd, n, confidence=confidence)
    return PairedTest(n, mean, float(t), p_t, float(p_perm), sd, low, high)


def mean_interval(mean: float, sd: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """The t confidence interval of a mean from ``n`` observations with sample standard deviation
    ``sd`` (ddof 1): mean -+ t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n). (NaN, NaN) for n < 2."""
    if n < 2 or not (np.isfinite(mean) and np.isfinite(sd)):
        return np.nan, np.nan
    from scipy import stats  # scipy comes with jax; imported here so that analysis loads without it

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / np.sqrt(n)
    return float(mean - half), float(mean + half)


def paired_power(n: int, mean_diff: float, sd_diff: float, *, alpha: float = 0.05) -> float:
    """Power of the two-sided paired (one-sample) t-test at level ``alpha`` with ``n`` pairs when the
    differences have mean ``mean_diff`` and standard deviation ``sd_diff``: P(|T| > t_{1 - alpha/2, n-1})
    with T noncentral t (n - 1 degrees of freedom, noncentrality sqrt(n) * mean_diff / sd_diff), both
    tails counted (= statsmodels' TTestPower().power). NaN for n < 2 or non-finite inputs; with
    sd_diff == 0 it is 1 for a nonzero difference and alpha for none."""
    if n < 2 or not (np.isfinite(mean_diff) and np.isfinite(sd_diff)) or sd_diff < 0:
        return np.nan
    if sd_diff == 0:
        return 1.0 if mean_diff != 0 else alpha
    from scipy import stats

    df, nc = n - 1, np.sqrt(n) * mean_diff / sd_diff
    crit = stats.t.ppf(1 - alpha / 2, df)
    # P(T < -crit) as P(-T > crit), -T being noncentral t with -nc: scipy's nct.cdf returns NaN far in
    # the lower tail (df 99, nc 10), its sf does not
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def paired_sample_size(mean_diff: float, sd_diff: float, *, alpha: float = 0.05, power: float = 0.8,
                       max_n: int = 2**40) -> float | None:
    """The smallest number of pairs ``n >= 2`` at which the two-sided paired t-test at level ``alpha``
    detects a true mean difference ``mean_diff`` (differences with standard deviation ``sd_diff``) with
    probability at least ``power`` (:func:`paired_power`, exact noncentral t; power grows with n, so a
    bisection finds it). For planning: ``mean_diff`` and ``sd_diff`` are usually the observed ones.

    None when an input is not finite (unknown: e.g. fewer than 2 pairs to estimate the SD); ``math.inf``
    when no n reaches the power (``mean_diff == 0``, or beyond ``max_n``); 2 when ``sd_diff == 0`` and
    ``mean_diff != 0`` (every pair differs by the same amount)."""
    if not 0 < alpha < 1 or not alpha < power < 1:
        raise ValueError(f"need 0 < alpha < power < 1; got alpha {alpha}, power {power}")
    if not (np.isfinite(mean_diff) and np.isfinite(sd_diff)) or sd_diff < 0:
        return None
    if mean_diff == 0:
        return math.inf
    if sd_diff == 0:
        return 2
    lo, hi = 1, 2  # power(lo) < target <= power(hi); power(1) is undefined, i.e. never enough
    while paired_power(hi, mean_diff, sd_diff, alpha=alpha) < power:
        lo, hi = hi, hi * 2
        if hi > max_n:
            return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if paired_power(mid, mean_diff, sd_diff, alpha=alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi
