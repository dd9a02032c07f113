"""The forgetting-prediction protocol: predict a new task's forgetting from a few measured entries.

Rows are split into train tasks (fully measured) and test tasks. For each seed and each test task,
``k`` entries of the test row are revealed; a method is fitted on the train rows plus those revealed
entries and predicts the rest. Metrics are computed on the hidden entries of all test rows pooled,
per seed, then reported as mean and standard deviation over seeds.

Unlike the paper's reference code (one scikit-surprise refit per test task in a Python loop), every
(seed, test task) problem is solved in one compiled program: the problems are stacked and the
method's jitted core is vmapped over them (``batch_size`` bounds how many are solved at once).
``mode="fold_in"`` instead fits the train rows once and folds each revealed row in without
refitting, the streaming use case.

Predictors that live outside this package (the LM-based ``jaxforget.rep_dot``, which needs model
code) are scored on exactly the same hidden entries with :meth:`ProtocolResult.add`; ``evaluate``
with no method returns the reveal draws and hidden masks they need.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget.completion._common import Array, check_choice, check_options, prepare
from jaxforget.completion.additive import fit_additive
from jaxforget.completion.knn import fit_knn
from jaxforget.completion.logistic import fit_logistic_mf
from jaxforget.completion.low_rank import fit_low_rank, fit_soft_impute
from jaxforget.completion.metrics import all_metrics

REVEAL_SCHEMES = ("without_replacement", "reference")
MODES = ("refit", "fold_in")


@dataclasses.dataclass(frozen=True)
class _Registered:
    """A jitted core plus the defaults the protocol uses where they differ from the core's own."""

    core: Callable[..., Any]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # set by the method name

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option a user may set, with its value in the protocol."""
        params = inspect.signature(self.core).parameters
        own = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "seed"}
        return {n: v for n, v in {**own, **self.overrides}.items() if n not in self.fixed}


# Defaults for prediction. The ridge terms of the additive model, of the KNN baselines and of MF are
# small because a test row has only k ~ 30 revealed entries: surprise's ALS defaults (15 / 10) would
# shrink its offset by a third (measured: KNNBaseline RMSE 0.121 -> 0.114 on the benchmark matrix).
# The reference code's SGD baselines (per-rating reg 0.02) are nearly unregularised too. ALS MF
# converges in ~10 sweeps here; 20 leaves a margin. KNN neighbourhood and logistic defaults are the
# paper's (k=40, min_k=1, msd; rank 5, L2 0.1, step 0.001, 5,000 steps).
_SMALL_RIDGE_BASELINES = dict(baseline_reg_row=1.0, baseline_reg_col=1.0, baseline_epochs=50)
METHODS: dict[str, _Registered] = {
    "additive": _Registered(fit_additive, dict(reg_row=1.0, reg_col=1.0, n_epochs=50)),
    "knn": _Registered(fit_knn, dict(sim="msd", **_SMALL_RIDGE_BASELINES), dict(rule="basic")),
    "knn_baseline": _Registered(fit_knn, dict(sim="msd", **_SMALL_RIDGE_BASELINES), dict(rule="baseline")),
    "mf": _Registered(fit_low_rank, dict(rank=5, biased=True, reg=0.1, reg_bias=0.1, n_iters=20)),
    "soft_impute": _Registered(fit_soft_impute, dict(lam=None, max_rank=None)),
    "logistic_mf": _Registered(fit_logistic_mf, dict(rank=5, biased=True)),
    "logistic_additive": _Registered(fit_logistic_mf, {}, dict(rank=0, biased=True)),
}


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method name with option overrides, e.g. ``Method("mf", {"rank": 10})``.

    :meth:`parse` reads the command-line form ``"mf:rank=10,reg=0.05"``.
    """

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_choice("method", self.name, METHODS)
        reg = METHODS[self.name]
        check_options(f"method {self.name!r}", self.options, reg.defaults)

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))

    @property
    def resolved(self) -> dict[str, Any]:
        return {**METHODS[self.name].defaults, **self.options, **METHODS[self.name].fixed}

    @property
    def link(self) -> str:
        return "logit" if METHODS[self.name].core is fit_logistic_mf else "identity"

    @classmethod
    def parse(cls, text: str) -> "Method":
        return cls(*parse_spec(text))


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"name:opt=value,..."`` -> ``(name, {opt: value})``; values become bool, None, int, float or str."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"method option {item!r} in {text!r} is not of the form name=value")
        options[key.strip()] = _parse_value(value.strip())
    return name.strip(), options


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def reveal_mask(key: Array, observed: Array, k: int, scheme: str = "without_replacement") -> Array:
    """Which entries of each test row are revealed: ``bool[T, N]``, a subset of ``observed``.

    ``"without_replacement"``: k distinct observed entries per row, drawn independently per row.
    ``"reference"``: the paper's reference code -- one draw of k column indices *with* replacement,
    shared by all test rows (so fewer than k distinct entries may be revealed).
    """
    T, N = observed.shape
    if scheme == "reference":
        cols = jax.random.randint(key, (k,), 0, N)
        return observed & jnp.zeros(N, bool).at[cols].set(True)[None, :]
    u = jnp.where(observed, jax.random.uniform(key, (T, N)), -1.0)
    _, idx = jax.lax.top_k(u, k)
    return observed & jnp.zeros((T, N), bool).at[jnp.arange(T)[:, None], idx].set(True)


@dataclasses.dataclass
class ProtocolResult:
    """Per method: metrics per seed, predictions ``[S, T, N]`` and wall time."""

    methods: list[str]
    metrics: dict[str, dict[str, np.ndarray]]  # method -> metric -> [S]
    predictions: dict[str, np.ndarray]  # method -> [S, T, N]
    reveal: np.ndarray  # [S, T, N]
    seconds: dict[str, float]
    test_rows: list[int]
    train_rows: list[int]
    seeds: list[int]
    settings: dict[str, Any]
    z_test: np.ndarray | None = None  # [T, N] the test rows (hidden entries zeroed)
    hidden: np.ndarray | None = None  # [S, T, N] the entries every method is scored on

    def add(self, label: str, predictions: Any, *, seconds: float, pred_threshold: float | None = None,
            extra_metrics: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None) -> None:
        """Score predictions ``[S, T, N]`` of a method run outside :func:`evaluate` (one predicted row per
        seed and test task) on the same hidden entries, with the same metrics, and add them to the result.

        ``pred_threshold``: a prediction above it means "forgotten" (default: the protocol threshold).
        ``extra_metrics``: name -> ``[S]`` values added to (or replacing) the standard ones.
        ``options``: recorded under ``settings["methods"][label]``.
        """
        if label in self.metrics:
            raise ValueError(f"method {label!r} is already in the result")
        pred = np.asarray(predictions, np.float32)
        if pred.shape != self.hidden.shape:
            raise ValueError(f"{label}: predictions of shape {pred.shape}; expected (seeds, test tasks, columns) "
                             f"= {self.hidden.shape}")
        mets = score(pred, self.z_test, self.hidden, threshold=self.settings["threshold"],
                     top_n=self.settings["top_n"], pred_threshold=pred_threshold)
        for name, v in (extra_metrics or {}).items():
            v = np.asarray(v, np.float64)
            if v.shape != (len(self.seeds),):
                raise ValueError(f"{label}: metric {name!r} has shape {v.shape}; expected one value per seed")
            mets[name] = v
        self.methods.append(label)
        self.metrics[label] = mets
        self.predictions[label] = pred
        self.seconds[label] = float(seconds)
        self.settings["methods"][label] = dict(options or {})

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """method -> metric -> (mean, std over seeds); NaN seeds (undefined AUC) are skipped."""
        out = {}
        for m, mets in self.metrics.items():
            out[m] = {}
            for name, v in mets.items():
                v = v[np.isfinite(v)]
                out[m][name] = (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))
        return out

    def table(self) -> str:
        """A markdown table of method x metric, ``mean ± std`` over seeds, plus wall time."""
        summary = self.summary()
        names = list(dict.fromkeys(n for m in self.methods for n in self.metrics[m]))  # a metric only some have: "-"
        lines = ["| method | " + " | ".join(names) + " | seconds |", "|---" * (len(names) + 2) + "|"]
        for m in self.methods:
            cells = [f"{summary[m][n][0]:.4f} ± {summary[m][n][1]:.4f}" if n in summary[m] else "—" for n in names]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {self.seconds[m]:.2f} |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return dict(
            summary={m: {n: dict(mean=a, std=b) for n, (a, b) in d.items()} for m, d in self.summary().items()},
            per_seed={m: {n: v.tolist() for n, v in d.items()} for m, d in self.metrics.items()},
            seconds=self.seconds,
            test_rows=self.test_rows,
            train_rows=self.train_rows,
            seeds=self.seeds,
            settings=self.settings,
        )


METRIC_ORDER = ("rmse", "f1", "precision", "recall", "auc")  # then precision@<top_n>


def score(pred: Any, z_test: Any, hidden: Any, *, threshold: float, top_n: int,
          pred_threshold: float | None = None) -> dict[str, np.ndarray]:
    """The protocol's metrics per seed: ``pred [S, T, N]`` against ``z_test [T, N]`` on the ``hidden [S, T, N]``
    entries of each seed, pooled over test tasks. Returns metric -> float64 ``[S]``."""
    fn = _metric_fn(float(threshold), int(top_n), None if pred_threshold is None else float(pred_threshold))
    mets = jax.device_get(fn(jnp.asarray(pred), jnp.asarray(z_test), jnp.asarray(hidden)))
    return {n: np.asarray(mets[n], dtype=np.float64) for n in (*METRIC_ORDER, f"precision@{top_n}")}


@lru_cache(maxsize=None)
def _metric_fn(threshold: float, top_n: int, pred_threshold: float | None) -> Callable:
    """The jitted, seed-vmapped metrics (one compilation per setting and shape, shared by all methods)."""
    return jax.jit(jax.vmap(partial(all_metrics, threshold=threshold, top_n=top_n, pred_threshold=pred_threshold),
                            in_axes=(0, None, 0)))


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


def _solve(method: Method, Z_train, mask_train, z_test, reveal, seeds, mode: str, batch_size: int | None):
    """Predicted rows ``[P, N]`` for ``P`` (test row, reveal, seed) problems, one compiled program."""
    core = METHODS[method.name].core
    opts = _core_options(method, Z_train)
    with_seed = _accepts_seed(core)

    if mode == "fold_in":
        fit = core(Z_train, mask_train, **opts)
        return jax.jit(lambda z, r: fit.fold_in(z, r))(z_test, reveal)

    def one(args):
        z, r, s = args
        Zp = jnp.concatenate([Z_train, z[None]], axis=0)
        Mp = jnp.concatenate([mask_train, r[None]], axis=0)
        fit = core(Zp, Mp, **opts, **({"seed": s} if with_seed else {}))
        return fit.predict_row(Zp.shape[0] - 1)

    P = z_test.shape[0]
    if batch_size is None or batch_size >= P:
        run = jax.jit(jax.vmap(lambda z, r, s: one((z, r, s))))
        return run(z_test, reveal, seeds)
    run = jax.jit(partial(jax.lax.map, one, batch_size=batch_size))
    return run((z_test, reveal, seeds))


def _predict(method: Method, Z_train, mask_train, z_test, reveal, seeds, mode: str, batch_size: int | None,
             clip: bool) -> Array:
    """``_solve`` on the prediction scale: probabilities for logistic methods, and with ``clip`` the
    predictions clipped to the range of the observed train entries."""
    pred = _solve(method, Z_train, mask_train, z_test, reveal, seeds, mode, batch_size)
    if method.link == "logit":
        pred = jax.nn.sigmoid(pred)
    if clip:
        lo = jnp.min(jnp.where(mask_train, Z_train, jnp.inf))
        hi = jnp.max(jnp.where(mask_train, Z_train, -jnp.inf))
        pred = jnp.clip(pred, lo, hi)
    return pred


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
) -> ProtocolResult:
    """Run the prediction protocol for each method (see module docstring).

    Args:
      Z, mask: the matrix and its observed entries (default: finite entries).
      test_rows: row indices of the test tasks; all other rows are train tasks.
      methods: registered names (``METHODS``), ``"name:opt=value,..."`` strings or :class:`Method`; may
        be empty (the result then holds the reveal draws and ``hidden`` masks, for :meth:`ProtocolResult.add`).
      k: revealed entries per test row.
      seeds: one reveal draw (and model initialisation) per seed.
      reveal: ``"without_replacement"`` or the reference code's ``"reference"`` scheme.
      mode: ``"refit"`` (fit train rows + revealed entries per problem) or ``"fold_in"``.
      binary: ``Z`` is 0/1 (exact-match drop): labels are ``Z > 0.5``, predictions of logistic
        methods are probabilities, thresholds 0.5 (logit 0).
      threshold: "forgotten" means ``Z > threshold`` for precision/recall/F1/AUC (default 0, or
        0.5 when binary).
      top_n: n of precision@n.
      clip: clip predictions to the range of the observed train entries (what surprise does with
        its rating scale).
      batch_size: solve at most this many problems at once (memory bound); default all.
    """
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
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    rev = jax.vmap(lambda key: reveal_mask(key, mask_test, k, reveal))(keys)  # [S, T, N]
    z_all = jnp.broadcast_to(Z_test[None], (S, T, N)).reshape(S * T, N)
    seed_all = jnp.repeat(jnp.asarray(seeds), T)
    hidden = mask_test[None] & ~rev

    result = ProtocolResult(
        methods=labels, metrics={}, predictions={}, reveal=np.asarray(rev), seconds={}, test_rows=test_rows,
        train_rows=train_rows, seeds=seeds,
        settings=dict(k=k, reveal=reveal, mode=mode, binary=binary, threshold=threshold, top_n=top_n, clip=clip,
                      methods={m.label: m.resolved for m in methods}),
        z_test=np.asarray(Z_test), hidden=np.asarray(hidden),
    )
    for m, label in zip(methods, labels):
        t0 = time.perf_counter()
        pred = _predict(m, Z_train, mask_train, z_all, rev.reshape(S * T, N), seed_all, mode, batch_size, clip)
        pred = pred.reshape(S, T, N)
        result.metrics[label] = score(pred, Z_test, hidden, threshold=threshold, top_n=top_n)
        result.seconds[label] = time.perf_counter() - t0
        result.predictions[label] = np.asarray(pred)
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
) -> np.ndarray:
    """Predicted full rows ``[P, N]`` for ``P`` new tasks of which only the ``revealed`` entries
    (``bool[P, N]``) of ``z_rows`` are measured, from fully (or partly: ``mask_train``) measured
    train rows ``Z_train [M, N]``: the protocol's solver outside the benchmark, e.g. to decide what
    to replay from a few measured entries. Entries of ``z_rows`` outside ``revealed`` are ignored
    (NaN allowed). ``seeds``: one per row, or one for all. Logistic methods return probabilities."""
    check_choice("mode", mode, MODES)
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
    return np.asarray(_predict(m, Z0, mask, jnp.asarray(np.where(rev, z, 0.0)), jnp.asarray(rev),
                               jnp.asarray(seeds_arr), mode, None, clip))
