"""Scores of the prediction protocol: per-seed metrics, the baselines beside every method, the
printed table (with each method's gain over the best baseline) and the per-entry arrays.

Gains are paired: per seed, the method's metric minus the best baseline's on the same hidden
entries (for RMSE the baseline's minus the method's), so positive is always better. The best
baseline of a metric is the one with the best mean over seeds among those that define it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget.completion.baselines import ALL_POSITIVE, ALL_POSITIVE_METRICS, BASELINES, baseline_predictions
from jaxforget.completion.metrics import all_metrics

METRIC_ORDER = ("rmse", "f1", "precision", "recall", "auc")  # then precision@<top_n>
LOWER_IS_BETTER = ("rmse",)


def gain_metrics(top_n: int) -> tuple[str, ...]:
    """The metrics a gain over the baselines is reported for (precision and recall trade off against
    each other, so only their F1 is)."""
    return ("rmse", "f1", "auc", f"precision@{top_n}")


@dataclasses.dataclass
class ProtocolResult:
    """Per method: metrics per seed, predictions ``[S, T, N]`` and wall time; the same for the
    baselines (``jaxforget.completion.baselines``), scored on the same hidden entries."""

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
    baselines: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)  # name -> metric -> [S]
    baseline_predictions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [S, T, N]
    # label -> a prediction above it is "forgotten" (None: the protocol threshold)
    pred_thresholds: dict[str, float | None] = dataclasses.field(default_factory=dict)

    def score_baselines(self, Z_train: Any, mask_train: Any) -> None:
        """Compute and score every baseline (``evaluate`` calls this once)."""
        preds = jax.device_get(baseline_predictions(jnp.asarray(Z_train), jnp.asarray(mask_train),
                                                    jnp.asarray(self.z_test), jnp.asarray(self.reveal)))
        kw = dict(threshold=self.settings["threshold"], top_n=self.settings["top_n"])
        for name in BASELINES:
            if name == ALL_POSITIVE:  # every hidden entry called forgotten: only F1/precision/recall exist
                above = np.full(self.hidden.shape, self.settings["threshold"] + 1.0, np.float32)
                mets = score(above, self.z_test, self.hidden, **kw)
                mets = {n: (v if n in ALL_POSITIVE_METRICS else np.full_like(v, np.nan)) for n, v in mets.items()}
            else:
                self.baseline_predictions[name] = np.asarray(preds[name], np.float32)
                mets = score(preds[name], self.z_test, self.hidden, **kw)
            self.baselines[name] = mets

    def add(self, label: str, predictions: Any, *, seconds: float, pred_threshold: float | None = None,
            extra_metrics: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None) -> None:
        """Score predictions ``[S, T, N]`` of a method run outside :func:`evaluate` (one predicted row per
        seed and test task) on the same hidden entries, with the same metrics, and add them to the result.

        ``pred_threshold``: a prediction above it means "forgotten" (default: the protocol threshold).
        ``extra_metrics``: name -> ``[S]`` values added to (or replacing) the standard ones.
        ``options``: recorded under ``settings["methods"][label]``.
        """
        if label in self.metrics or label in BASELINES:
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
        self.pred_thresholds[label] = pred_threshold
        self.settings["methods"][label] = dict(options or {})

    # -- summaries ---------------------------------------------------------------------------------

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """method -> metric -> (mean, std over seeds); NaN seeds (undefined AUC) are skipped."""
        return {m: _summarise(mets) for m, mets in self.metrics.items()}

    def baseline_summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """baseline -> metric -> (mean, std over seeds); NaN where the baseline does not define it."""
        return {b: _summarise(mets) for b, mets in self.baselines.items()}

    def best_baselines(self) -> dict[str, str]:
        """metric -> the name of the baseline with the best mean (for the gain metrics it defines)."""
        summary = self.baseline_summary()
        best = {}
        for metric in gain_metrics(self.settings["top_n"]):
            sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
            cands = [(sign * v[metric][0], i, b) for i, (b, v) in enumerate(summary.items())
                     if metric in v and np.isfinite(v[metric][0])]
            if cands:
                best[metric] = min(cands)[2]  # ties: the baseline listed first
        return best

    def gains(self) -> dict[str, dict[str, np.ndarray]]:
        """method -> metric -> per-seed gain ``[S]`` over the metric's best baseline (positive = better)."""
        best = self.best_baselines()
        out = {}
        for m, mets in self.metrics.items():
            out[m] = {}
            for metric, b in best.items():
                if metric in mets:
                    d = mets[metric] - self.baselines[b][metric]
                    out[m][metric] = -d if metric in LOWER_IS_BETTER else d
        return out

    def table(self) -> str:
        """A markdown table of baselines and methods x metric, ``mean ± std`` over seeds, each method's
        gain over the best baseline of the column in parentheses, wall time, and a legend line."""
        summary, base, gains = self.summary(), self.baseline_summary(), self.gains()
        best = self.best_baselines()
        names = list(dict.fromkeys([*METRIC_ORDER, f"precision@{self.settings['top_n']}",
                                    *(n for m in self.methods for n in self.metrics[m])]))
        lines = ["| method | " + " | ".join(names) + " | seconds |", "|---" * (len(names) + 2) + "|"]
        for b in self.baselines:
            cells = [_cell(base[b].get(n)) for n in names]
            lines.append(f"| {b} (baseline) | " + " | ".join(cells) + " | — |")
        for m in self.methods:
            cells = []
            for n in names:
                c = _cell(summary[m].get(n))
                g = gains[m].get(n)
                if g is not None and c != "—" and np.isfinite(g).any():
                    c += f" ({np.nanmean(g):+.4f})"
                cells.append(c)
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {self.seconds[m]:.2f} |")
        legend = ", ".join(f"{n}: {b}" for n, b in best.items())
        lines.append("")
        lines.append(f"(±x): gain over the best baseline of the column, positive = better, mean of the per-seed "
                     f"differences on the same hidden entries (best baselines: {legend}). "
                     f"Forgotten: Z > {self.settings['threshold']:g}.")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        gains = self.gains()
        return dict(
            summary={m: {n: dict(mean=a, std=b) for n, (a, b) in d.items()} for m, d in self.summary().items()},
            per_seed={m: {n: v.tolist() for n, v in d.items()} for m, d in self.metrics.items()},
            baselines=dict(
                summary={b: {n: dict(mean=x, std=y) for n, (x, y) in d.items()}
                         for b, d in self.baseline_summary().items()},
                per_seed={b: {n: v.tolist() for n, v in d.items()} for b, d in self.baselines.items()},
                best=self.best_baselines(),
            ),
            gains={m: {n: dict(mean=float(np.nanmean(v)), std=float(np.nanstd(v)), per_seed=v.tolist())
                       for n, v in d.items()} for m, d in gains.items()},
            seconds=self.seconds,
            test_rows=self.test_rows,
            train_rows=self.train_rows,
            seeds=self.seeds,
            settings=self.settings,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to recompute any metric, as arrays (for ``np.savez``):

        ``labels [L]`` (baselines, then methods; ``all_positive`` has no prediction: every hidden
        entry is called forgotten), ``kinds [L]`` ("baseline" | "method"), ``predictions [L, S, T, N]``
        float32 on the scale that is scored (probabilities for logistic methods), ``pred_thresholds
        [L]`` (a prediction above it counts as forgotten), ``truth [T, N]`` (NaN = not measured),
        ``hidden [S, T, N]`` (the scored entries), ``revealed [S, T, N]``, ``seeds [S]``,
        ``test_rows [T]``, ``train_rows``, ``threshold`` (forgotten: truth > threshold), ``top_n``, ``k``.
        """
        labels = [*self.baseline_predictions, *self.methods]
        preds = [*self.baseline_predictions.values(), *(self.predictions[m] for m in self.methods)]
        thr = float(self.settings["threshold"])
        cuts = [thr] * len(self.baseline_predictions) + [
            thr if self.pred_thresholds.get(m) is None else float(self.pred_thresholds[m]) for m in self.methods]
        measured = self.hidden[0] | self.reveal[0]
        return dict(
            labels=np.array(labels), kinds=np.array(["baseline"] * len(self.baseline_predictions)
                                                    + ["method"] * len(self.methods)),
            predictions=np.stack(preds).astype(np.float32) if preds else np.zeros((0, *self.hidden.shape), np.float32),
            pred_thresholds=np.array(cuts, np.float64),
            truth=np.where(measured, self.z_test, np.nan).astype(np.float32),
            hidden=self.hidden, revealed=self.reveal,
            seeds=np.array(self.seeds), test_rows=np.array(self.test_rows), train_rows=np.array(self.train_rows),
            threshold=np.array(thr), top_n=np.array(int(self.settings["top_n"])), k=np.array(int(self.settings["k"])),
        )


def _summarise(mets: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, v in mets.items():
        v = v[np.isfinite(v)]
        out[name] = (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))
    return out


def _cell(ms: tuple[float, float] | None) -> str:
    if ms is None or not np.isfinite(ms[0]):
        return "—"
    return f"{ms[0]:.4f} ± {ms[1]:.4f}"


def score(pred: Any, z_test: Any, hidden: Any, *, threshold: float, top_n: int,
          pred_threshold: float | None = None) -> dict[str, np.ndarray]:
    """The protocol's metrics per seed: ``pred [S, T, N]`` against ``z_test [T, N]`` on the ``hidden [S, T, N]``
    entries of each seed, pooled over test tasks. Returns metric -> float64 ``[S]``."""
    fn = _metric_fn(float(threshold), int(top_n), None if pred_threshold is None else float(pred_threshold))
    mets = jax.device_get(fn(jnp.asarray(pred), jnp.asarray(z_test), jnp.asarray(hidden)))
    return {n: np.asarray(mets[n], dtype=np.float64) for n in (*METRIC_ORDER, f"precision@{top_n}")}


@lru_cache(maxsize=None)
def _metric_fn(threshold: float, top_n: int, pred_threshold: float | None) -> Callable:
    """The jitted metrics, mapped over seeds (one compilation per setting and shape, shared by all methods).
    Seeds are mapped, not vmapped: AUC's sort picks its fast path per seed with a ``cond``, which
    ``vmap`` would turn into running both paths."""
    metrics = partial(all_metrics, threshold=threshold, top_n=top_n, pred_threshold=pred_threshold)
    return jax.jit(lambda pred, z, hidden: jax.lax.map(lambda a: metrics(a[0], z, a[1]), (pred, hidden)))
