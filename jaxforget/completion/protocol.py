"""The forgetting-prediction protocol: predict a new task's forgetting from a few measured entries.

Rows are split into train tasks (fully measured) and test tasks. For each seed and each test task,
``k`` entries of the test row are revealed; a method is fitted on the train rows plus those revealed
entries and predicts the rest. Metrics are computed on the hidden entries of all test rows pooled,
per seed, then reported as mean and standard deviation over seeds.

Unlike the paper's reference code (one scikit-surprise refit per test task in a Python loop), every
(seed, test task) problem of a method is solved in one compiled program. Where the train rows are
fully observed, ``additive``, ``knn``, ``knn_baseline`` and ``mf`` solve each problem through its
revealed columns against the train rows prepared once (:mod:`.train_block`, ``solver="train_block"``:
the joint fit's estimator, cost independent of the train block per problem); otherwise the method's
jitted core is refitted on the stacked train rows + test row, vmapped over the problems
(``solver="joint"``). Either way the problems are batched to a memory budget from XLA's memory
analysis of the compiled program (:mod:`.batching`), or ``batch_size`` at a time.
``mode="fold_in"`` instead fits the train rows once and folds each revealed row in without
refitting, the streaming use case (:class:`jaxforget.completion.Completer` keeps such a fit).

Every table carries the trivial baselines of :mod:`jaxforget.completion.baselines`, scored on the
same hidden entries, and each method's gain over the best of them (:mod:`.results`).

Compilation: one program per method, options and shape, cached across calls (``_refit_program``);
float options are arguments of the program, not constants, so a new ridge value or SoftImpute's
data-dependent ``lam`` does not recompile.

Predictors that live outside this package (the LM-based ``jaxforget.rep_dot``, which needs model
code) are scored on exactly the same hidden entries with :meth:`ProtocolResult.add`; ``evaluate``
with no method returns the reveal draws and hidden masks they need.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget.completion import train_block
from jaxforget.completion._common import Array, check_choice, prepare
from jaxforget.completion.batching import default_budget, plan_batch
from jaxforget.completion.registry import METHODS, Method, parse_spec
from jaxforget.completion.results import METRIC_ORDER, ProtocolResult, score

__all__ = ["METHODS", "METRIC_ORDER", "MODES", "Method", "ProtocolResult", "REVEAL_SCHEMES", "complete_rows",
           "evaluate", "fit_method", "parse_spec", "reference_reveal", "reveal_mask", "score", "split_rows"]

REVEAL_SCHEMES = ("without_replacement", "reference")
MODES = ("refit", "fold_in")
SOLVERS = ("auto", "train_block", "joint")


def reveal_mask(key: Array | int, observed: Any, k: int, scheme: str = "without_replacement") -> Array:
    """Which entries of each test row are revealed: ``bool[T, N]``, a subset of ``observed``.

    ``"without_replacement"``: k distinct observed entries per row, drawn independently per row from
    ``key`` (a ``jax.random`` key or an integer seed).
    ``"reference"``: the paper's reference code, exactly: the column indices
    ``numpy.random.default_rng(seed).choice(N, k)`` -- drawn *with* replacement, one draw shared by all
    test rows (so fewer than k distinct entries may be revealed) -- intersected with ``observed``;
    ``key`` must be the integer seed (:func:`reference_reveal`).
    """
    check_choice("reveal scheme", scheme, REVEAL_SCHEMES)
    if scheme == "reference":
        if not isinstance(key, (int, np.integer)):
            raise ValueError("reveal scheme 'reference' draws numpy.random.default_rng(seed).choice(N, k); "
                             "pass the integer seed, not a jax key")
        return jnp.asarray(reference_reveal(int(key), observed, k))
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    return _distinct_reveal(key, jnp.asarray(observed, bool), k)


def reference_reveal(seed: int, observed: Any, k: int) -> np.ndarray:
    """The reference code's reveal (``create_masked_arr``): ``default_rng(seed).choice(N, k)``, with
    replacement, the same columns for every test row; ``bool[T, N]`` (numpy)."""
    observed = np.asarray(observed, bool)
    cols = np.random.default_rng(seed).choice(observed.shape[-1], k)
    row = np.zeros(observed.shape[-1], bool)
    row[cols] = True
    return observed & row


@partial(jax.jit, static_argnames=("k",))
def _distinct_reveal(key: Array, observed: Array, k: int) -> Array:
    T, N = observed.shape
    u = jnp.where(observed, jax.random.uniform(key, (T, N)), -1.0)
    _, idx = jax.lax.top_k(u, k)
    return observed & jnp.zeros((T, N), bool).at[jnp.arange(T)[:, None], idx].set(True)


@partial(jax.jit, static_argnames=("k",))
def _distinct_reveals(seeds: Array, observed: Array, k: int) -> Array:
    """``[S, T, N]``: :func:`_distinct_reveal` per seed (one compiled program)."""
    return jax.vmap(lambda s: _distinct_reveal(jax.random.key(s), observed, k))(seeds)


def _accepts_seed(core: Callable[..., Any]) -> bool:
    return "seed" in inspect.signature(core).parameters


def _core_options(method: Method, Z_train: Array) -> dict[str, Any]:
    opts = method.resolved
    if method.name == "soft_impute":
        if opts["lam"] is None:  # 1% of the top singular value of the train rows, fixed for all problems
            opts["lam"] = 0.01 * float(jnp.linalg.norm(Z_train, ord=2))
        if opts["max_rank"] is None:
            opts["max_rank"] = min(Z_train.shape[0] + 1, Z_train.shape[1])
    return opts


def _split_options(method: Method, opts: dict[str, Any]) -> tuple[tuple, dict[str, float]]:
    """Options as (static items, the hashable key of a compiled program; float values, which the
    program takes as arguments). A float is traced unless the option's default is an int/bool/str
    (a static argument of the core, e.g. ``n_iters=1e3``)."""
    defaults = METHODS[method.name].defaults
    traced = {n: v for n, v in opts.items()
              if isinstance(v, float) and not isinstance(defaults.get(n), (bool, int, str))}
    static = tuple(sorted((n, v) for n, v in opts.items() if n not in traced))
    return static, traced


@lru_cache(maxsize=None)
def _refit_program(name: str, static: tuple, batch: int | None) -> Callable:
    """The jitted program that fits train rows + one revealed row per problem and predicts that row,
    for every problem: ``run(Z_train, mask_train, floats, z [P, N], reveal [P, N], seeds [P]) -> [P, N]``,
    ``batch`` problems at a time (``None``: all at once; sequential methods one at a time).
    Cached per (method, static options, batch); jax caches per shape below that."""
    reg = METHODS[name]
    core, opts = reg.core, dict(static)
    with_seed = _accepts_seed(core)

    def one(Zt, Mt, floats, z, r, s):
        Zp = jnp.concatenate([Zt, z[None]], axis=0)
        Mp = jnp.concatenate([Mt, r[None]], axis=0)
        fit = core(Zp, Mp, **opts, **floats, **({"seed": s} if with_seed else {}))
        return fit.predict_row(Zp.shape[0] - 1)

    if batch is None and not reg.sequential:
        return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0, 0, 0)))

    def run(Zt, Mt, floats, z, r, s):
        return jax.lax.map(lambda a: one(Zt, Mt, floats, *a), (z, r, s), batch_size=batch)

    return jax.jit(run)


@lru_cache(maxsize=None)
def _block_program(name: str, static: tuple, batch: int | None) -> Callable:
    """The train-block solver's program (:mod:`.train_block`):
    ``run(block, extras, floats, idx [P, K], w [P, K], zr [P, K], slot [P]) -> [P, N]``."""

    def run(block, extras, floats, idx, w, zr, slot):
        f = train_block.row_function(name, dict(static) | floats)
        one = lambda a: f(block, extras, *a)  # noqa: E731
        if batch is None:
            return jax.vmap(one)((idx, w, zr, slot))
        return jax.lax.map(one, (idx, w, zr, slot), batch_size=batch)

    return jax.jit(run)


@jax.jit
def _fold_rows(fit: Any, z: Array, reveal: Array) -> Array:
    """``fit.fold_in`` of a batch of rows (the fit is an argument: one program per fit type and shape)."""
    return fit.fold_in(z, reveal)


def fit_method(Z_train: Any, method: str | Method = "mf", *, mask_train: Any | None = None, seed: int = 0,
               init: Any | None = None) -> Any:
    """Fit a registered method (with the protocol's defaults) once on ``Z_train``: the fit that
    ``mode="fold_in"`` folds new rows into (``complete_rows(..., fitted=fit)`` reuses it). ``init``:
    a previous fit to start from, for the cores that take one (``additive``, ``mf``)."""
    m = method if isinstance(method, Method) else Method.parse(method)
    Z0, mask = prepare(Z_train, mask_train)
    return _fit(m, Z0, mask, seed, init)


def _fit(method: Method, Z0: Array, mask: Array, seed: int, init: Any | None = None) -> Any:
    core = METHODS[method.name].core
    static, floats = _split_options(method, _core_options(method, Z0))
    extra = ({"seed": seed} if _accepts_seed(core) else {}) | ({"init": init} if init is not None else {})
    return core(Z0, mask, **dict(static), **floats, **extra)


def _solver_for(method: Method, mode: str, solver: str, mask_train: Array) -> str:
    """``"fold_in"``, ``"train_block"`` or ``"joint"``: how a method's problems are solved."""
    if mode == "fold_in":
        return "fold_in"
    fits = train_block.supports(method.name, method.resolved)
    if solver == "train_block" or (solver == "auto" and fits):
        why = ("it has no train-block solver" if not fits
               else "the train rows have hidden entries" if not bool(jnp.all(mask_train)) else None)
        if why is None:
            return "train_block"
        if solver == "train_block":
            raise ValueError(f"solver 'train_block' cannot solve {method.label!r}: {why}; use solver 'auto' or 'joint'")
    return "joint"


def _solve(method: Method, Z_train, mask_train, z_test, reveal, seeds, mode: str, batch_size: int | None,
           fitted: Any | None = None, solver: str = "auto", memory: int | None = None) -> tuple[Array, dict]:
    """Predicted rows ``[P, N]`` for ``P`` (test row, reveal, seed) problems, one compiled program, and
    how they were solved: ``{"solver": ..., "batching": ...}``."""
    how = _solver_for(method, mode, solver, mask_train)
    if how == "fold_in":
        fit = _fit(method, Z_train, mask_train, 0) if fitted is None else fitted
        return _fold_rows(fit, z_test, reveal), {"solver": how}
    static, floats = _split_options(method, _core_options(method, Z_train))
    P, N = z_test.shape
    seeds = jnp.asarray(seeds)
    if how == "train_block":
        K = int(np.max(np.sum(np.asarray(reveal), axis=-1)))
        block, idx, w, zr = train_block.problems(Z_train, z_test, reveal, K)
        uniq, slot = np.unique(np.asarray(seeds), return_inverse=True)
        extras = train_block.extras(method.name, method.resolved, block, jnp.asarray(uniq))
        args = (block, extras, floats, idx, w, zr, jnp.asarray(slot, jnp.int32))
        program = partial(_block_program, method.name, static)
    else:
        args = (Z_train, mask_train, floats, z_test, reveal, seeds)
        program = partial(_refit_program, method.name, static)
    if batch_size is not None:
        batching = None
        run = program(None if batch_size >= P else batch_size)
    elif METHODS[method.name].sequential and how == "joint":
        batching = None  # one problem at a time by construction
        run = program(None)
    else:
        plan = plan_batch(program, args, P, default_budget() if memory is None else int(memory))
        batching = plan.to_json()
        run = program(None if plan.batch >= P else plan.batch)
    return run(*args), {"solver": how, "batching": batching}


def _predict(method: Method, Z_train, mask_train, z_test, reveal, seeds, mode: str, batch_size: int | None,
             clip: bool, fitted: Any | None = None, solver: str = "auto",
             memory: int | None = None) -> tuple[Array, dict]:
    """``_solve`` on the prediction scale: probabilities for logistic methods, and with ``clip`` the
    predictions clipped to the range of the observed train entries."""
    pred, how = _solve(method, Z_train, mask_train, z_test, reveal, seeds, mode, batch_size, fitted, solver, memory)
    if method.link == "logit":
        pred = jax.nn.sigmoid(pred)
    if clip:
        lo = jnp.min(jnp.where(mask_train, Z_train, jnp.inf))
        hi = jnp.max(jnp.where(mask_train, Z_train, -jnp.inf))
        pred = jnp.clip(pred, lo, hi)
    return pred, how


def evaluate(
    Z: Any,
    mask: Any | None = None,
    *,
    test_rows: Sequence[int],
    methods: Sequence[str | Method] = ("additive", "knn_baseline", "mf"),
    k: int = 30,
    seeds: Sequence[int] = (0, 1, 2),
    reveal: str = "without_replacement",
    mode: str = "refit",
    binary: bool = False,
    threshold: float | None = None,
    top_n: int = 100,
    clip: bool = False,
    batch_size: int | None = None,
    solver: str = "auto",
    memory: int | None = None,
) -> ProtocolResult:
    """Run the prediction protocol for each method (see module docstring).

    Args:
      Z, mask: the matrix and its observed entries (default: finite entries).
      test_rows: row indices of the test tasks; all other rows are train tasks.
      methods: registered names (``METHODS``), ``"name:opt=value,..."`` strings or :class:`Method`; may
        be empty (the result then holds the reveal draws and ``hidden`` masks, for :meth:`ProtocolResult.add`).
      k: revealed entries per test row.
      seeds: one reveal draw (and model initialisation) per seed.
      reveal: ``"without_replacement"`` (k distinct entries per row, ``jax.random`` seeded by the seed)
        or ``"reference"``: the reference code's draw, ``numpy.random.default_rng(seed).choice(N, k)``
        shared by all test rows (:func:`reveal_mask`).
      mode: ``"refit"`` (fit train rows + revealed entries per problem) or ``"fold_in"``.
      binary: ``Z`` is 0/1 (exact-match drop): labels are ``Z > 0.5``, predictions of logistic
        methods are probabilities, thresholds 0.5 (logit 0).
      threshold: "forgotten" means ``Z > threshold`` for precision/recall/F1/AUC, and a prediction
        above it is a predicted "forgotten" (default 0, or 0.5 when binary). On a real-valued Z
        with mostly positive entries F1 says little (the all-positive baseline scores high); AUC
        and precision@n rank entries and do not depend on it.
      top_n: n of precision@n.
      clip: clip predictions to the range of the observed train entries (what surprise does with
        its rating scale).
      batch_size: solve this many problems at a time; default: as many as fit ``memory``.
      solver: ``"train_block"`` solves each problem through its revealed columns against the train
        rows, prepared once (:mod:`.train_block`: the joint fit's estimator, without refitting the
        train block per problem); ``"joint"`` refits the stacked ``(M+1) x N`` matrix per problem;
        ``"auto"`` (default): ``train_block`` where the method has such a solver and the train rows
        are fully observed, else ``joint``.
      memory: bytes the solver's program may use; the problems are batched to fit by XLA's memory
        analysis (:mod:`.batching`; default half the available memory). Recorded per method in
        ``settings["solvers"]``.
    """
    check_choice("solver", solver, SOLVERS)
    check_choice("reveal scheme", reveal, REVEAL_SCHEMES)
    check_choice("mode", mode, MODES)
    methods = [m if isinstance(m, Method) else Method.parse(m) for m in methods]
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods listed twice: {labels}")
    Z0, mask = prepare(Z, mask)
    M, N = Z0.shape
    test_rows = [int(t) for t in test_rows]
    bad = [t for t in test_rows if not 0 <= t < M]
    if bad:
        raise ValueError(f"test rows {bad} out of range for a matrix with {M} rows")
    if len(set(test_rows)) != len(test_rows) or not test_rows:
        raise ValueError(f"test_rows must be non-empty and distinct; got {test_rows}")
    train_rows = [i for i in range(M) if i not in set(test_rows)]
    if not train_rows:
        raise ValueError("every row is a test row; at least one train row is needed")
    if k < 1 or k > N:
        raise ValueError(f"k={k} revealed entries per test row, but the matrix has {N} columns")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("at least one seed is needed")
    n_obs = np.asarray(jnp.sum(mask[np.asarray(test_rows)], axis=1))
    short = [(t, int(c)) for t, c in zip(test_rows, n_obs) if c <= k]
    if short and reveal == "without_replacement":
        raise ValueError(
            f"k={k} but test rows (row, observed entries) {short[:5]} have no more than k observed "
            "entries: nothing would be left to evaluate"
        )
    for m in methods:
        if m.link == "logit" and not binary:
            raise ValueError(f"method {m.name!r} is for binary matrices; pass binary=True")
    if binary and not bool(jnp.all(jnp.where(mask, (Z0 == 0) | (Z0 == 1), True))):
        raise ValueError("binary=True but observed entries of Z are not all 0 or 1")
    threshold = (0.5 if binary else 0.0) if threshold is None else threshold

    tr, te = np.asarray(train_rows), np.asarray(test_rows)
    Z_train, mask_train, Z_test, mask_test = Z0[tr], mask[tr], Z0[te], mask[te]
    S, T = len(seeds), len(test_rows)
    if reveal == "reference":
        rev = jnp.asarray(np.stack([reference_reveal(s, np.asarray(mask_test), k) for s in seeds]))
    else:
        rev = _distinct_reveals(jnp.asarray(seeds), mask_test, k)  # [S, T, N]
    z_all = jnp.broadcast_to(Z_test[None], (S, T, N)).reshape(S * T, N)
    seed_all = jnp.repeat(jnp.asarray(seeds), T)
    hidden = mask_test[None] & ~rev

    result = ProtocolResult(
        methods=labels, metrics={}, predictions={}, reveal=np.asarray(rev), seconds={}, test_rows=test_rows,
        train_rows=train_rows, seeds=seeds,
        settings=dict(k=k, reveal=reveal, mode=mode, binary=binary, threshold=threshold, top_n=top_n, clip=clip,
                      methods={m.label: m.resolved for m in methods}, solvers={}),
        z_test=np.asarray(Z_test), hidden=np.asarray(hidden),
    )
    result.score_baselines(Z_train, mask_train)
    for m, label in zip(methods, labels):
        t0, c0 = time.perf_counter(), time.process_time()
        pred, how = _predict(m, Z_train, mask_train, z_all, rev.reshape(S * T, N), seed_all, mode, batch_size, clip,
                             solver=solver, memory=memory)
        pred = pred.reshape(S, T, N)
        result.metrics[label] = score(pred, Z_test, hidden, threshold=threshold, top_n=top_n)
        result.seconds[label] = time.perf_counter() - t0
        result.predictions[label] = np.asarray(pred)
        # CPU seconds of the whole process (every thread), solve + score: the figure that does not depend on load
        result.settings["solvers"][label] = how | {"cpu_seconds": time.process_time() - c0}
    return result


def split_rows(n_rows: int, test_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random (train_rows, test_rows) split with ``round(test_fraction * n_rows)`` test rows."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1); got {test_fraction}")
    n_test = max(1, min(n_rows - 1, round(test_fraction * n_rows)))
    perm = np.random.default_rng(seed).permutation(n_rows)
    return sorted(int(i) for i in perm[n_test:]), sorted(int(i) for i in perm[:n_test])


def complete_rows(
    Z_train: Any,
    z_rows: Any,
    revealed: Any,
    *,
    method: str | Method = "mf",
    mask_train: Any | None = None,
    seeds: int | Sequence[int] = 0,
    mode: str = "refit",
    clip: bool = False,
    fitted: Any | None = None,
    solver: str = "auto",
    memory: int | None = None,
) -> np.ndarray:
    """Predicted full rows ``[P, N]`` for ``P`` new tasks of which only the ``revealed`` entries
    (``bool[P, N]``) of ``z_rows`` are measured, from fully (or partly: ``mask_train``) measured
    train rows ``Z_train [M, N]``: the protocol's solver outside the benchmark, e.g. to decide what
    to replay from a few measured entries. Entries of ``z_rows`` outside ``revealed`` are ignored
    (NaN allowed). ``seeds``: one per row, or one for all. Logistic methods return probabilities.

    ``mode="refit"`` fits ``Z_train`` plus each row (one compiled program per method and shape,
    reused by later calls); ``mode="fold_in"`` folds the rows into one fit of ``Z_train``:
    ``fitted`` (from :func:`fit_method` on the same ``Z_train``) skips that fit, for a stream of rows.
    ``solver``, ``memory``: as in :func:`evaluate`.
    """
    check_choice("mode", mode, MODES)
    check_choice("solver", solver, SOLVERS)
    if fitted is not None and mode != "fold_in":
        raise ValueError("complete_rows: fitted= is a fit to fold rows into; it needs mode='fold_in'")
    m = method if isinstance(method, Method) else Method.parse(method)
    Z0, mask = prepare(Z_train, mask_train)
    z = np.asarray(z_rows, np.float32)
    rev = np.asarray(revealed, bool)
    if z.ndim != 2 or z.shape != rev.shape or z.shape[1] != Z0.shape[1]:
        raise ValueError(f"z_rows {z.shape} and revealed {rev.shape} must both be [P, {Z0.shape[1]}] "
                         f"(the train rows have {Z0.shape[1]} columns)")
    if not rev.any(axis=1).all():
        raise ValueError(f"rows {np.flatnonzero(~rev.any(axis=1)).tolist()} have no revealed entry")
    if not np.isfinite(z[rev]).all():
        raise ValueError("revealed entries of z_rows must be finite")
    seeds_arr = np.broadcast_to(np.asarray(seeds, np.int32), (z.shape[0],))
    pred, _ = _predict(m, Z0, mask, jnp.asarray(np.where(rev, z, 0.0)), jnp.asarray(rev), jnp.asarray(seeds_arr),
                       mode, None, clip, fitted, solver, memory)
    return np.asarray(pred)
