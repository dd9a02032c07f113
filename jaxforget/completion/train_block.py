"""The protocol's joint fits, solved through the shape of the problem: one shared train block, one sparse row.

In every problem of the prediction protocol the train rows are the same fully observed block
``Z_train [M, N]`` and only the test row is sparse (its ``k`` revealed entries). Refitting the stacked
``(M+1) x N`` matrix per (seed, test row) repeats the same work on the train block in every problem (190
times in the paper's protocol: 19 test rows x 10 seeds) and holds a copy of it per problem. Here what
depends only on the train block is computed once -- column and row sums, the Gram matrix
``H = sum_j g_j g_j^T`` of the augmented columns ``g_j = [Z_train[:, j]; 1]``, each seed's initial
factors -- and each problem is solved through its revealed columns:

* ``additive`` (ALS): a train row observes every column, so its offset update reads the column offsets
  only through their sum; an unrevealed column's update reads the row offsets only through the train
  rows' sum. A sweep is ``O(k)``; the predicted row one ``O(N)`` pass.
* ``knn`` / ``knn_baseline``: the test row shares only its revealed columns with a train row, so its
  similarities cost ``O(M k)``; at every unrevealed column the neighbours are the same top-``k`` train
  rows, so the predicted row is one ``[M] x [M, N]`` product (batched over problems: a GEMM). The
  revealed columns, where the test row is its own neighbour, are computed explicitly.
* ``mf`` (ALS): at an unrevealed column the ridge solve is a linear map of ``g_j`` that is the same for
  every such column, so the sums over columns the row update needs are quadratic forms of ``H``. A
  sweep costs ``O(M^2 (r + k))``, independent of N; the predicted row is one product with ``Z_train^T``.

These are the joint fits' estimators -- :func:`~jaxforget.completion.fit_additive`,
:func:`~jaxforget.completion.fit_knn` and :func:`~jaxforget.completion.fit_low_rank` on the stacked
matrix, the same updates in the same order from the same initial factors -- with the floating-point
operations in another order: their predictions agree to ~1e-5 (tests/completion/test_train_block.py).

A problem's revealed entries arrive as ``idx [K]`` (column indices; ``N`` pads a row with fewer than
``K``), ``w [K]`` (1 revealed, 0 padding) and ``zr [K]`` (the revealed values, 0 at padding).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxforget.completion._common import Array, mm
from jaxforget.completion.knn import pair_sim
from jaxforget.completion.low_rank import JITTER

__all__ = ["Block", "extras", "gram", "make_block", "mf_init", "problems", "row_function", "supports"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Block:
    """What every problem reads of the fully observed train block ``Z [M, N]``."""

    Z: Array  # [M, N]
    col_sum: Array  # [N]
    row_sum: Array  # [M]
    total: Array  # []


@jax.jit
def make_block(Z: Array) -> Block:
    """The block's sums, computed once for every problem."""
    col_sum = jnp.sum(Z, axis=0)
    return Block(Z, col_sum, jnp.sum(Z, axis=1), jnp.sum(col_sum))


@jax.jit
def gram(block: Block) -> Array:
    """``H = sum_j g_j g_j^T`` over all columns, ``g_j = [Z[:, j]; 1]``: ``[M+1, M+1]``."""
    N = block.Z.shape[1]
    corner = jnp.full((1, 1), N, block.Z.dtype)
    top = jnp.concatenate([mm(block.Z, block.Z.T), block.row_sum[:, None]], axis=1)
    return jnp.concatenate([top, jnp.concatenate([block.row_sum[None], corner], axis=1)], axis=0)


@partial(jax.jit, static_argnames=("K",))
def problems(Z_train: Array, z: Array, reveal: Array, K: int) -> tuple[Block, Array, Array, Array]:
    """The block and the problems' revealed entries: ``(block, idx [P, K] int32, w [P, K], zr [P, K])`` from
    the test rows ``z [P, N]`` and ``reveal: bool[P, N]`` (at most ``K`` entries a row): the revealed columns
    in increasing order, padded with ``N`` (weight 0, value 0)."""
    N = reveal.shape[-1]
    # top_k of the 0/1 mask returns the revealed columns first; on ties it keeps the lower index first
    _, idx = jax.lax.top_k(reveal.astype(jnp.float32), K)
    ok = jnp.take_along_axis(reveal, idx, axis=-1)
    idx = jnp.sort(jnp.where(ok, idx, N), axis=-1).astype(jnp.int32)
    w = (idx < N).astype(z.dtype)
    zr = jnp.take_along_axis(z, jnp.minimum(idx, N - 1), axis=-1) * w
    return make_block(Z_train), idx, w, zr


def _gather(x: Array, idx: Array) -> Array:
    """``x[..., idx]`` with 0 at the padding index."""
    return jnp.take(x, idx, axis=-1, mode="fill", fill_value=0)


def _scatter(row: Array, idx: Array, values: Array) -> Array:
    """``row`` with ``values`` at ``idx``; padding indices are dropped."""
    return row.at[idx].set(values, mode="drop")


# --------------------------------------------------------------------------------------------------
# additive


def _additive_state(block: Block, idx, w, zr, reg_row, reg_col, n_epochs):
    """The joint ALS of ``fit_additive`` on ``[Z; revealed row]``: ``(mu, b_t, b_col [N], b_row [M])``."""
    M, N = block.Z.shape
    dt = block.Z.dtype
    n_t = jnp.sum(w)
    mu = (block.total + jnp.sum(w * zr)) / jnp.maximum(M * N + n_t, 1.0)
    S_R = _gather(block.col_sum, idx)
    colres_R = S_R - M * mu + w * (zr - mu)  # the joint residual's column sums at the revealed columns
    rest_sum = block.total - jnp.sum(w * S_R)  # column sums of the unrevealed columns, summed
    test_res = jnp.sum(w * (zr - mu))

    def sweep(_, carry):
        B, b_t, _, _ = carry  # B: the train rows' offsets summed (the test row's is b_t)
        b_R = (colres_R - B - w * b_t) / (reg_col + M + w)
        C = (rest_sum - (N - n_t) * (M * mu + B)) / (reg_col + M) + jnp.sum(w * b_R)
        B_next = (block.total - M * N * mu - M * C) / (reg_row + N)
        b_t = (test_res - jnp.sum(w * b_R)) / (reg_row + n_t)
        return B_next, b_t, B, b_R

    zero = jnp.zeros((), dt)
    _, b_t, B, b_R = jax.lax.fori_loop(0, n_epochs, sweep, (zero, zero, zero, jnp.zeros_like(zr)))
    b_col = _scatter((block.col_sum - M * mu - B) / (reg_col + M), idx, b_R)
    C = jnp.sum(b_col)
    b_row = (block.row_sum - N * mu - C) / (reg_row + N)
    return mu, b_t, b_col, b_row


# --------------------------------------------------------------------------------------------------
# kNN


def _knn_one(block: Block, idx, w, zr, *, k, min_k, sim, rule, min_support, shrinkage, reg_row, reg_col,
             n_epochs):
    M, N = block.Z.shape
    dt = block.Z.dtype
    n_t = jnp.sum(w)
    if rule == "baseline" or sim == "pearson_baseline":
        mu, b_t, b_col, b_row = _additive_state(block, idx, w, zr, reg_row, reg_col, n_epochs)
    else:
        mu = (block.total + jnp.sum(w * zr)) / jnp.maximum(M * N + n_t, 1.0)
        b_t, b_col, b_row = jnp.zeros((), dt), jnp.zeros(N, dt), jnp.zeros(M, dt)
    Z_R = _gather(block.Z, idx)  # [M, K]
    b_col_R = _gather(b_col, idx)
    # the test row's features and the train rows' at the revealed columns, as knn._features defines them
    # on the stacked matrix (a train row's mean is over all N columns)
    if sim == "msd":
        centre = (_gather(block.col_sum, idx) + w * zr) / (M + w)
        x_t, X = zr - centre, Z_R - centre
    elif sim == "pearson":
        x_t = zr - jnp.sum(w * zr) / jnp.maximum(n_t, 1.0)
        X = Z_R - (block.row_sum / N)[:, None]
    elif sim == "pearson_baseline":
        x_t, X = zr - (mu + b_t) - b_col_R, Z_R - (mu + b_row)[:, None] - b_col_R
    else:  # cosine
        x_t, X = zr, Z_R
    W_R = jnp.broadcast_to(w, (M, w.shape[0]))
    s = pair_sim(sim, (x_t * w)[None], w[None], X * W_R, W_R, min_support, jnp.asarray(shrinkage, dt))[0]  # [M]

    # Unrevealed columns: the candidates are the train rows, in knn._predict_from's order.
    order = jnp.argsort(-s, stable=True)
    rank = jnp.zeros(M, jnp.int32).at[order].set(jnp.arange(1, M + 1, dtype=jnp.int32))
    a = jnp.where((rank <= k) & (s > 0), s, 0.0)
    enough = jnp.sum((rank <= k) & (s > 0)) >= min_k
    sum_a = jnp.where(enough, jnp.sum(a), 1.0)
    if rule == "basic":
        pred = jnp.where(enough, mm(a, block.Z) / sum_a, mu)
    else:
        pred = mu + b_t + jnp.where(enough, (mm(a, block.Z) - jnp.dot(a, mu + b_row)) / sum_a, b_col)

    # Revealed columns: the test row observes them too (similarity 1, after the train rows on ties).
    s_all = jnp.concatenate([s, jnp.ones((1,), dt)])
    order_all = jnp.argsort(-s_all, stable=True)
    rank_all = jnp.zeros(M + 1, jnp.int32).at[order_all].set(jnp.arange(1, M + 2, dtype=jnp.int32))
    use = (rank_all <= k) & (s_all > 0)
    a_R = jnp.where(use, s_all, 0.0)
    enough_R = jnp.sum(use) >= min_k
    sum_R = jnp.where(enough_R, jnp.sum(a_R), 1.0)
    Zc = jnp.concatenate([Z_R, zr[None]], axis=0)  # [M+1, K]
    if rule == "basic":
        pred_R = jnp.where(enough_R, mm(a_R, Zc) / sum_R, mu)
    else:
        resid = Zc - (mu + jnp.concatenate([b_row, b_t[None]]))[:, None] - b_col_R[None]
        pred_R = mu + b_t + b_col_R + jnp.where(enough_R, mm(a_R, resid) / sum_R, 0.0)
    return _scatter(pred, idx, pred_R)


# --------------------------------------------------------------------------------------------------
# low rank (ALS)


def _aug(F: Array, biased: bool) -> Array:
    if not biased:
        return F
    return jnp.concatenate([F, jnp.ones(F.shape[:-1] + (1,), F.dtype)], axis=-1)


def _mf_one(block: Block, H: Array, init: tuple, idx, w, zr, *, rank, biased, reg, reg_bias, n_iters):
    """The joint ALS of ``fit_low_rank`` on ``[Z; revealed row]`` and its predicted test row ``[N]``.

    ``init``: this problem's seed's initial factors, as the reductions the first row update needs:
    ``(ZQ [M, d] = Z @ aug(Q0), QQ [d, d] = aug(Q0)^T aug(Q0), q_sum [d], Q0_R [K, r])``.

    After a column update, every unrevealed column's ``y_j = [Q_j, b_col_j]`` is ``Xa^T g_j`` for one
    ``Xa [M+1, d]``; the revealed columns' ``y_R [K, d]`` are kept explicitly.
    """
    M, N = block.Z.shape
    dt = block.Z.dtype
    n_t = jnp.sum(w)
    mu = (block.total + jnp.sum(w * zr)) / jnp.maximum(M * N + n_t, 1.0) if biased else jnp.zeros((), dt)
    reg_vec = jnp.full((rank,), reg, dt)
    if biased:
        reg_vec = jnp.concatenate([reg_vec, jnp.full((1,), reg_bias, dt)])
    ridge = jnp.diag(reg_vec + JITTER)
    Z_R = _gather(block.Z, idx)  # [M, K]
    g_R = jnp.concatenate([Z_R, jnp.ones((1, w.shape[0]), dt)], axis=0) * w  # [M+1, K], padding zeroed

    def split(x):
        return (x[..., :rank], x[..., rank]) if biased else (x, jnp.zeros(x.shape[:-1], dt))

    def test_row(Qt_R, b_col_R):
        A = mm(Qt_R.T * w, Qt_R) + ridge
        return jnp.linalg.solve(A, mm(w * (zr - mu - b_col_R), Qt_R))

    def columns(x_tr, x_t):
        """The column update from the row factors: ``(Xa, y_R)``."""
        P, b_row = split(x_tr)
        Pt, pt = _aug(P, biased), _aug(split(x_t)[0], biased)
        A = mm(Pt.T, Pt) + ridge
        X = jnp.linalg.solve(A, Pt.T).T  # [M, d]
        v = jnp.linalg.solve(A, mm(Pt.T, mu + b_row))
        Xa = jnp.concatenate([X, -v[None]], axis=0)
        b_t = split(x_t)[1]
        rhs_R = mm((Z_R - (mu + b_row)[:, None]).T, Pt) + (zr - mu - b_t)[:, None] * pt[None]  # [K, d]
        y_R = jnp.linalg.solve(A + jnp.outer(pt, pt), rhs_R.T).T
        return Xa, y_R

    def rows(Xa, y_R):
        """The row update from the column representation: ``(x_tr [M, d], x_t [d])``."""
        Q_R, b_col_R = split(y_R)
        Qt_R = _aug(Q_R, biased)
        if biased:
            Kmat = jnp.concatenate([Xa[:, :rank], jnp.zeros((M + 1, 1), dt).at[M, 0].set(1.0)], axis=1)
            beta = Xa[:, rank]
        else:
            Kmat, beta = Xa, jnp.zeros(M + 1, dt)
        # sums over the unrevealed columns: all columns (H) less the revealed ones (g_R)
        HK = mm(H, Kmat) - mm(g_R, mm(g_R.T, Kmat))  # [M+1, d]
        A = mm(Kmat.T, HK) + mm(Qt_R.T * w, Qt_R) + ridge
        rhs = HK[:M] - (mu * HK[M] + mm(beta, HK))[None]
        rhs = rhs + mm((Z_R - mu - b_col_R[None]) * w, Qt_R)
        return jnp.linalg.solve(A, rhs.T).T, test_row(Qt_R, b_col_R)

    # first sweep: from the seed's random column factors, column offsets 0
    ZQ, QQ, q_sum, Q0_R = init
    A0 = QQ + ridge
    x_tr = jnp.linalg.solve(A0, (ZQ - mu * q_sum[None]).T).T
    x_t = test_row(_aug(Q0_R, biased), jnp.zeros_like(zr))
    Xa, y_R = columns(x_tr, x_t)

    def sweep(_, carry):
        Xa, y_R, _ = carry
        x_tr, x_t = rows(Xa, y_R)
        Xa, y_R = columns(x_tr, x_t)
        return Xa, y_R, x_t

    Xa, y_R, x_t = jax.lax.fori_loop(0, n_iters - 1, sweep, (Xa, y_R, x_t))
    p_t, b_t = split(x_t)
    c = _aug(p_t, biased)  # y_j . c = b_col_j + Q_j . p_t
    u = mm(Xa, c)
    pred = mu + b_t + mm(u[:M], block.Z) + u[M]
    return _scatter(pred, idx, mu + b_t + mm(y_R, c))


def mf_init(block: Block, seeds: Array, *, rank: int, biased: bool) -> tuple[Array, Array, Array, Array]:
    """Per seed, ``fit_low_rank``'s initial column factors ``Q0 = 0.1 N(0, 1) [N, r]`` (from
    ``jax.random.key(seed)``) and the reductions the first row update reads: ``(Q0 [S, N, r],
    ZQ [S, M, d], QQ [S, d, d], q_sum [S, d])``."""
    return _mf_init(block, seeds, rank, biased)


@partial(jax.jit, static_argnames=("rank", "biased"))
def _mf_init(block, seeds, rank, biased):
    N = block.Z.shape[1]
    dt = block.Z.dtype

    def one(seed):
        Q0 = 0.1 * jax.random.normal(jax.random.key(seed), (N, rank), dt)
        Qt = _aug(Q0, biased)
        return Q0, mm(block.Z, Qt), mm(Qt.T, Qt), jnp.sum(Qt, axis=0)

    return jax.lax.map(one, seeds)


# --------------------------------------------------------------------------------------------------
# which methods and options


def supports(name: str, options: dict[str, Any]) -> bool:
    """Whether ``name`` with ``options`` (resolved) has a solver here (otherwise the joint fit is used)."""
    if name == "additive":
        return options.get("method", "als") == "als"
    if name in ("knn", "knn_baseline"):
        return options.get("baseline_method", "als") == "als"
    if name == "mf":
        return options.get("method", "als") == "als" and options.get("rank", 0) >= 1
    return False


def extras(name: str, options: dict[str, Any], block: Block, seeds: Array) -> tuple:
    """What a method's problems share beyond the block: for ``mf``, ``(H, mf_init(...))`` for the
    distinct ``seeds`` (a problem names its seed by its index in them); nothing for the others."""
    if name != "mf":
        return ()
    return gram(block), mf_init(block, seeds, rank=options["rank"], biased=options["biased"])


def row_function(name: str, options: dict[str, Any]):
    """``f(block, extras, idx, w, zr, slot) -> [N]``: one problem's predicted test row for a supported
    method (:func:`supports`) with resolved ``options`` (numbers may be traced)."""
    o = options
    if name == "additive":
        def f(block, ex, idx, w, zr, slot):
            mu, b_t, b_col, _ = _additive_state(block, idx, w, zr, o["reg_row"], o["reg_col"], o["n_epochs"])
            return mu + b_t + b_col
    elif name in ("knn", "knn_baseline"):
        def f(block, ex, idx, w, zr, slot):
            return _knn_one(block, idx, w, zr, k=o["k"], min_k=o["min_k"], sim=o["sim"], rule=o["rule"],
                            min_support=o["min_support"], shrinkage=o["shrinkage"], reg_row=o["baseline_reg_row"],
                            reg_col=o["baseline_reg_col"], n_epochs=o["baseline_epochs"])
    elif name == "mf":
        def f(block, ex, idx, w, zr, slot):
            H, (Q0, ZQ, QQ, q_sum) = ex
            init = (ZQ[slot], QQ[slot], q_sum[slot], Q0.at[slot, idx].get(mode="fill", fill_value=0))
            return _mf_one(block, H, init, idx, w, zr, rank=o["rank"], biased=o["biased"], reg=o["reg"],
                           reg_bias=o["reg_bias"], n_iters=o["n_iters"])
    else:
        raise ValueError(f"no train-block solver for method {name!r}")
    return f
