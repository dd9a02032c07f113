"""Figures of a forgetting matrix (matplotlib, Agg; no pyplot state, so it is safe in any process).

Every function returns a :class:`matplotlib.figure.Figure` of a fixed size in inches; :func:`save_png`
writes it at a fixed dpi (no tight bounding box), so a figure's pixel size is ``figsize * dpi``
exactly, after :func:`fit_inside` has moved the axes so that long tick and axis labels (task names)
stay on the canvas. Heatmaps use a diverging blue-white-red map centred at 0 with a symmetric range
(``vmax``; the paper uses 0.5, :func:`symmetric_range` picks a robust one), NaN in grey, and the
paper's marginal strips: column means above, row means on the right.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

CMAP = "RdBu_r"  # blue (negative: improved) - white (0) - red (positive: forgotten)
Z_LABEL = "Z (change in log-perplexity)"
MISSING_COLOR = "0.75"
DPI = 100
LABEL_PT = 7
"""The smallest text of any figure (task names, strip labels, ticks): readable in a report at 100%."""
MAX_ROW_LABELS = 40
"""Row names drawn beside a heatmap at most: more would overlap at :data:`LABEL_PT` on its height."""


def symmetric_range(Z: Any, quantile: float = 0.99) -> float:
    """Half-width of a colour range centred at 0: the ``quantile`` of ``|Z|`` over finite entries
    (robust to a few extreme entries); 1.0 when there is nothing to scale."""
    values = np.abs(np.asarray(Z, np.float64))
    values = values[np.isfinite(values)]
    v = float(np.quantile(values, quantile)) if values.size else 0.0
    return v if v > 0 else (float(values.max()) if values.size and values.max() > 0 else 1.0)


def _cmap():
    return colormaps[CMAP].with_extremes(bad=MISSING_COLOR)


def _matrix_axes(fig: Figure, rect: tuple[float, float, float, float], marginals: bool):
    """Main axes plus (optional) top strip for column means and right strip for row means."""
    x, y, w, h = rect
    if not marginals:
        return fig.add_axes(rect), None, None
    sw, sh = 0.05 * w, 0.06 * h  # strip width / height, relative to the panel so panels can be small
    gw, gh = 0.01 * w, 0.01 * h
    main = fig.add_axes((x, y, w - sw - gw, h - sh - gh))
    top = fig.add_axes((x, y + h - sh, w - sw - gw, sh), sharex=main)
    right = fig.add_axes((x + w - sw, y, sw, h - sh - gh), sharey=main)
    return main, top, right


def _draw_matrix(fig: Figure, rect, Z: np.ndarray, vmax: float, *, title: str | None, marginals: bool,
                 row_labels: Sequence[str] | None, xlabel: str | None, ylabel: str | None):
    Z = np.asarray(Z, np.float64)
    norm = Normalize(-vmax, vmax)
    main, top, right = _matrix_axes(fig, rect, marginals)
    image = main.imshow(np.ma.masked_invalid(Z), cmap=_cmap(), norm=norm, aspect="auto", interpolation="nearest")
    # rows and columns are indices: never a tick at 2.5
    main.xaxis.set_major_locator(MaxNLocator(integer=True))
    main.yaxis.set_major_locator(MaxNLocator(integer=True))
    if row_labels is not None and len(row_labels) <= MAX_ROW_LABELS:
        main.set_yticks(range(len(row_labels)), [str(s)[:24] for s in row_labels], fontsize=LABEL_PT)
    if xlabel:
        main.set_xlabel(xlabel)
    if ylabel:
        main.set_ylabel(ylabel)
    if marginals:
        with warnings.catch_warnings():  # an all-missing column has no mean: shown as missing
            warnings.simplefilter("ignore", RuntimeWarning)
            col_mean = np.nanmean(np.where(np.isfinite(Z), Z, np.nan), axis=0)
            row_mean = np.nanmean(np.where(np.isfinite(Z), Z, np.nan), axis=1)
        top.imshow(np.ma.masked_invalid(col_mean[None, :]), cmap=_cmap(), norm=norm, aspect="auto",
                   interpolation="nearest")
        right.imshow(np.ma.masked_invalid(row_mean[:, None]), cmap=_cmap(), norm=norm, aspect="auto",
                     interpolation="nearest")
        top.set_yticks([0], ["mean"], fontsize=LABEL_PT)
        top.tick_params(labelbottom=False)
        right.set_xticks([0], ["mean"], fontsize=LABEL_PT)
        right.tick_params(labelleft=False)
        if title:
            top.set_title(title, fontsize=9)
    elif title:
        main.set_title(title, fontsize=9)
    return main, image


def heatmap(Z: Any, *, vmax: float, title: str | None = None, marginals: bool = True,
            row_labels: Sequence[str] | None = None, xlabel: str | None = "upstream examples",
            ylabel: str | None = "tasks", cbar_label: str = Z_LABEL,
            figsize: tuple[float, float] = (10.0, 6.0)) -> Figure:
    """One ``[M, N]`` matrix (already in display order) with column-mean and row-mean strips and a
    colour bar labelled ``cbar_label``; colour range ``[-vmax, vmax]``."""
    fig = Figure(figsize=figsize, dpi=DPI)
    _, image = _draw_matrix(fig, (0.1, 0.1, 0.76, 0.82), Z, vmax, title=title, marginals=marginals,
                            row_labels=row_labels, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, cax=fig.add_axes((0.9, 0.1, 0.015, 0.78)), label=cbar_label)
    return fig


def panels(matrices: Sequence[tuple[str, Any]], *, vmax: float, suptitle: str | None = None,
           row_labels: Sequence[str] | None = None, cbar_label: str = Z_LABEL,
           figsize: tuple[float, float] | None = None) -> Figure:
    """Matrices of one shape side by side (e.g. Z, its rank-1 reconstruction, the residual) on one
    colour scale, each with its marginal strips; ``row_labels`` (task names) beside the first."""
    n = len(matrices)
    fig = Figure(figsize=figsize or (5.0 * n + 1.0, 5.0), dpi=DPI)
    width = 0.86 / n
    image = None
    for k, (title, Z) in enumerate(matrices):
        main, image = _draw_matrix(fig, (0.05 + k * width, 0.1, width - 0.03, 0.78), Z, vmax, title=title,
                                   marginals=True, row_labels=row_labels if k == 0 else None, xlabel="examples",
                                   ylabel="tasks" if k == 0 else None)
        if k > 0 and row_labels is not None:
            main.tick_params(left=False, labelleft=False)  # the same rows as the first panel's
    fig.colorbar(image, cax=fig.add_axes((0.93, 0.1, 0.012, 0.74)), label=cbar_label)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def r2_curve(r2: Mapping[str, float], *, title: str = "R² of low-rank fits",
             labels: Mapping[str, str] | None = None) -> Figure:
    """Centred R^2 of rank 1..k (``rank_<k>`` keys) against k, each point labelled with its value, and the
    row-mean, column-mean and additive (ridge and exact) fits as horizontal reference lines in their own
    colours, named by ``labels`` (default: the keys) in a legend beside the axes (never over a line), the
    y range padded so that no label is cut at the top."""
    fig = Figure(figsize=(9.0, 4.0), dpi=DPI)
    ax = fig.add_axes((0.09, 0.13, 0.5, 0.77))
    ranks = sorted(int(k.split("_")[1]) for k in r2 if k.startswith("rank_"))
    values = [r2[f"rank_{k}"] for k in ranks]
    ax.plot(ranks, values, "o-", color="C3", label="rank k (multiplicative at k = 1)", zorder=3)
    shown = list(values)
    for key, style, color in (("additive_exact", (0, (5, 1)), "C0"), ("additive", "--", "C2"),
                              ("row_mean", ":", "C4"), ("col_mean", "-.", "C1")):
        if key in r2:
            name = (labels or {}).get(key, key.replace("_", " "))
            ax.axhline(r2[key], linestyle=style, color=color, linewidth=1.3, label=f"{name}: {r2[key]:.3f}")
            shown.append(r2[key])
    for k, v in zip(ranks, values):
        ax.annotate(f"{v:.3f}", (k, v), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=LABEL_PT)
    finite = [v for v in shown if np.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(finite + [0.0]), max(finite)
    pad = 0.08 * max(hi - lo, 0.1)
    ax.set_ylim(lo - pad, hi + 2 * pad)  # room above the top point's label
    ax.set_xticks(ranks)
    if len(ranks) == 1:
        ax.set_xlim(ranks[0] - 0.5, ranks[0] + 0.5)
    ax.set_xlabel("rank k")
    ax.set_ylabel("R² (centred: 1 − Σ(Z − fit)² / Σ(Z − mean Z)²)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=LABEL_PT + 1, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    return fig


def task_distributions(Z: Any, row_names: Sequence[str], *, title: str) -> Figure:
    """Box plot of each task's forgetting over the examples (rows in the given order, first on top);
    whiskers at the 5th / 95th percentiles, the mean as a dot, NaN left out. The examples beyond the
    whiskers (10% of each task's) are not drawn, and the axis label says so."""
    Z = np.asarray(Z, np.float64)
    M = Z.shape[0]
    height = float(np.clip(0.16 * M + 1.5, 4.0, 24.0))
    fig = Figure(figsize=(8.0, height), dpi=DPI)
    ax = fig.add_axes((0.25, 0.6 / height, 0.7, 1 - 1.2 / height))
    data = [row[np.isfinite(row)] for row in Z]
    positions = np.arange(M)[::-1]
    ax.boxplot([d if d.size else [np.nan] for d in data], positions=positions, orientation="horizontal",
               whis=(5, 95), showfliers=False, widths=0.6)
    ax.plot([d.mean() if d.size else np.nan for d in data], positions, ".", color="C3", label="mean")
    ax.axvline(0, color="0.5", linewidth=0.8)
    ax.set_yticks(positions, [str(s)[:30] for s in row_names], fontsize=LABEL_PT if M > 40 else 8)
    ax.set_xlabel(f"{Z_LABEL}\nbox: quartiles; whiskers: 5th-95th percentile; the 10% of examples beyond the "
                  "whiskers are not drawn", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


@dataclasses.dataclass(frozen=True)
class Panel:
    """One scatter (numeric ``x``) or box-by-level (string ``x``) panel of :func:`scatter_grid`."""

    x: Sequence[Any]
    y: Sequence[float]
    xlabel: str
    ylabel: str
    note: str = ""  # e.g. "Pearson 0.41 (p 3e-4), Spearman 0.38 (p 1e-3)"
    names: Sequence[str] | None = None
    """One name per point (task names): every dot named when there are at most :data:`NAMED_POINTS`, else the
    extreme ones (:func:`named_points`)."""


NAMED_POINTS = 8
"""Names a scatter panel writes at most: more would cover one another where the dots cluster."""


def named_points(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points a panel names: all of them when few, else the extremes a reader asks about (the
    four largest y, the two smallest, the smallest and the largest x), at most :data:`NAMED_POINTS`."""
    if x.size <= NAMED_POINTS:
        return np.arange(x.size)
    by_y = np.argsort(-y, kind="stable")
    picked = [*by_y[:4], *by_y[::-1][:2], int(np.argmin(x)), int(np.argmax(x))]
    return np.array(sorted(set(int(i) for i in picked)))


def informative(panel: Panel) -> bool:
    """Whether a panel has something to show: at least two distinct x values among the points with both
    coordinates (a statistic that is the same for every task, e.g. the steps of an uncapped run, has none)."""
    y = np.asarray(panel.y, np.float64)
    if any(isinstance(v, str) for v in panel.x):
        return len({v for v, w in zip(panel.x, y) if v is not None and np.isfinite(w)}) >= 2
    x = np.array([np.nan if v is None else float(v) for v in panel.x])
    ok = np.isfinite(x) & np.isfinite(y)
    return np.unique(x[ok]).size >= 2


def scatter_grid(panel_list: Sequence[Panel], *, title: str, ncols: int = 3, subtitle: str = "") -> Figure:
    """A grid of scatter plots (and box plots for categorical x), each annotated with its note, the dots
    named (:attr:`Panel.names`) when few; ``subtitle`` (e.g. what the y scale means) under the title. Two
    to four panels fill a compact grid (2 x 2 for four), so no panel is left empty without need."""
    n = max(len(panel_list), 1)
    ncols = min(ncols, n, 2 if n == 4 else ncols)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.5 + 0.3 * bool(subtitle)), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(panel_list):]:
        ax.set_axis_off()
    for ax, p in zip(axes.ravel(), panel_list):
        y = np.asarray(p.y, np.float64)
        if any(isinstance(v, str) for v in p.x):
            levels = sorted({v for v in p.x if v is not None})
            groups = [y[[v == lv for v in p.x]] for lv in levels]
            ax.boxplot(groups, whis=(5, 95), showfliers=False)
            ax.set_xticks(range(1, len(levels) + 1), [str(lv)[:12] for lv in levels], rotation=45, fontsize=7)
        else:
            x = np.array([np.nan if v is None else float(v) for v in p.x])
            ok = np.isfinite(x) & np.isfinite(y)
            few = p.names is not None and 0 < ok.sum() <= 200
            ax.scatter(x[ok], y[ok], s=18 if few else 6, alpha=0.8 if few else 0.5, color="C0", edgecolors="none")
            if few:
                mid = (np.min(x[ok]) + np.max(x[ok])) / 2
                kept = np.flatnonzero(ok)
                for i in kept[named_points(x[kept], y[kept])]:  # names point inwards: none runs off the panel
                    right = x[i] > mid
                    ax.annotate(str(p.names[i])[:20], (x[i], y[i]), textcoords="offset points",
                                xytext=(-3 if right else 3, 3), ha="right" if right else "left", fontsize=LABEL_PT,
                                color="0.25")
                ax.margins(x=0.15, y=0.12)  # room for the names at the edges
        ax.set_xlabel(p.xlabel, fontsize=8)
        ax.set_ylabel(p.ylabel, fontsize=8)
        ax.tick_params(labelsize=LABEL_PT)
        if p.note:
            ax.set_title(p.note, fontsize=LABEL_PT)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10 if not subtitle else 9)
    top = 0.88 - (0.06 if subtitle else 0.0) * (2.0 / max(nrows, 1)) ** 0.5
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.12, top=top, hspace=0.55, wspace=0.3)
    return fig


def r2_over_steps(steps: Sequence[int], r2: Sequence[float | None], mean: Sequence[float | None]) -> Figure:
    """R^2 of the rank-1 fit (left axis) and mean forgetting (right axis) at each measured step."""
    fig = Figure(figsize=(6.0, 4.0), dpi=DPI)
    ax = fig.add_axes((0.12, 0.13, 0.74, 0.77))
    as_float = lambda vs: np.array([np.nan if v is None else v for v in vs], np.float64)  # noqa: E731
    ax.plot(steps, as_float(r2), "o-", color="C3", label="R² of rank-1 fit")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("R² (rank 1)", color="C3")
    twin = ax.twinx()
    twin.plot(steps, as_float(mean), "s--", color="C0", label="mean Z")
    twin.set_ylabel("mean Z", color="C0")
    ax.set_title("Forgetting over fine-tuning steps", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def block_heatmap(R: Any, blocks: Sequence[tuple[np.ndarray, np.ndarray]], *, vmax: float, title: str,
                  max_cols: int = 2000, seed: int = 0) -> tuple[Figure, dict[str, Any]]:
    """The residual ``R [M, N]`` with the rows and columns of each block brought together (block 1
    first; a row or column in several blocks goes with the first) and outlined; then the other rows,
    and a seeded sample of the other columns up to ``max_cols`` in all. Returns the figure and the
    display order (``rows``, ``cols``, ``seed``)."""
    R = np.asarray(R, np.float64)
    M, N = R.shape
    row_order, col_order, spans = [], [], []
    seen_r, seen_c = np.zeros(M, bool), np.zeros(N, bool)
    for rows, cols in blocks:
        new_r = [int(r) for r in rows if not seen_r[r]]
        new_c = [int(c) for c in cols if not seen_c[c]]
        spans.append((len(row_order), len(new_r), len(col_order), len(new_c)))
        row_order += new_r
        col_order += new_c
        seen_r[new_r] = True
        seen_c[new_c] = True
    rest_c = np.flatnonzero(~seen_c)
    room = max(max_cols - len(col_order), 0)
    if rest_c.size > room:
        rest_c = np.sort(np.random.default_rng(seed).choice(rest_c, room, replace=False))
    row_order += np.flatnonzero(~seen_r).tolist()
    col_order += rest_c.tolist()
    fig = heatmap(R[np.ix_(row_order, col_order)], vmax=vmax, title=title, marginals=False,
                  xlabel="upstream examples (block columns first)", ylabel="tasks (block rows first)",
                  cbar_label="residual (change in log-perplexity)")
    ax = fig.axes[0]
    for b, (r0, nr, c0, nc) in enumerate(spans):
        if nr and nc:
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), nc, nr, fill=False, edgecolor="k", linewidth=1.2))
            ax.annotate(f"block {b + 1}", (c0 + nc / 2, r0 - 0.5), ha="center", va="bottom", fontsize=7)
    return fig, dict(rows=row_order, cols=col_order, seed=seed)


def arm_intervals(per_task: Mapping[str, Sequence[float | None]], *, title: str,
                  reference: str | None = "none") -> tuple[Figure, dict[str, dict[str, float | None]]]:
    """Replay's held-out forgetting per arm (strategy), at the task level: each task's value (seeds
    averaged) as a grey dot, the mean over tasks with its 95% t interval (over tasks, as the report's
    primary table counts them) as a bar, arms top to bottom in the given order, and the ``reference`` arm's
    mean as a dashed line when it ran. Returns the figure and the plotted numbers per arm (``mean``,
    ``low``, ``high``, ``n``; the interval None with fewer than 2 tasks)."""
    from jaxforget.inference import paired_t

    labels = list(per_task)
    fig = Figure(figsize=(7.0, float(np.clip(0.5 * len(labels) + 1.6, 3.0, 12.0))), dpi=DPI)
    ax = fig.add_axes((0.3, 0.18, 0.65, 0.7))
    numbers: dict[str, dict[str, float | None]] = {}
    for y, label in enumerate(labels[::-1]):
        v = np.array([x for x in per_task[label] if x is not None and np.isfinite(x)], np.float64)
        if not v.size:
            numbers[label] = dict(mean=None, low=None, high=None, n=0)
            continue
        t = paired_t(v, np.zeros_like(v))
        low, high = (float(t["low"]), float(t["high"])) if v.size >= 2 else (None, None)
        numbers[label] = dict(mean=float(v.mean()), low=low, high=high, n=int(v.size))
        ax.plot(v, np.full(v.size, y) + np.linspace(-0.15, 0.15, v.size), ".", color="0.6", markersize=4,
                label="a task (seeds averaged)" if y == len(labels) - 1 else None)
        err = None if low is None else [[v.mean() - low], [high - v.mean()]]
        ax.errorbar([v.mean()], [y], xerr=err, fmt="o", color="C3", capsize=4,
                    label="mean over tasks, 95% t interval" if y == len(labels) - 1 else None)
    ref = numbers.get(reference or "", {}).get("mean")
    if ref is not None:
        ax.axvline(ref, color="0.4", linestyle="--", linewidth=0.8, label=f"{reference} (mean)")
    ax.set_yticks(range(len(labels)), labels[::-1], fontsize=8)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("held-out forgetting (mean Z on the never-replayed examples; lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, frameon=False)
    ax.grid(alpha=0.3, axis="x")
    return fig, numbers


def forecast_row(predicted: Any, revealed: Any, measured: Any | None = None, *, title: str) -> Figure:
    """A forecast's row of Z: the predicted values of the N upstream examples sorted (a line), the ``k``
    measured (revealed) entries as orange dots at their rank, and with the whole row measured
    (``measured``, forecast --measure-all) the measured values as grey dots, plus a second panel of
    predicted against measured on the examples not revealed, with the line y = x."""
    pred = np.asarray(predicted, np.float64)
    rev = np.asarray(revealed, bool)
    order = np.argsort(pred, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    two = measured is not None
    fig = Figure(figsize=(11.0 if two else 7.0, 4.2), dpi=DPI)
    ax = fig.add_axes((0.08, 0.14, 0.5 if two else 0.86, 0.74))
    if two:
        z = np.asarray(measured, np.float64)
        ax.plot(rank[~rev], z[~rev], ".", color="0.65", markersize=3, label="measured (not revealed)")
    ax.plot(np.arange(order.size), pred[order], "-", color="C0", linewidth=1.4, label="predicted")
    ax.plot(rank[rev], pred[rev], "o", color="C1", markersize=4, label=f"revealed ({int(rev.sum())} measured)")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("upstream examples, sorted by the predicted value")
    ax.set_ylabel(Z_LABEL)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    if two:
        hidden = ~rev & np.isfinite(z)
        bx = fig.add_axes((0.67, 0.14, 0.3, 0.74))
        bx.scatter(z[hidden], pred[hidden], s=5, alpha=0.5, color="C0", edgecolors="none")
        lo = float(np.nanmin([z[hidden].min(initial=0), pred[hidden].min(initial=0)]))
        hi = float(np.nanmax([z[hidden].max(initial=0), pred[hidden].max(initial=0)]))
        bx.plot([lo, hi], [lo, hi], "--", color="0.4", linewidth=0.8, label="y = x")
        rmse = float(np.sqrt(np.mean((pred[hidden] - z[hidden]) ** 2))) if hidden.any() else float("nan")
        bx.set_title(f"not revealed: RMSE {rmse:.4f}", fontsize=9)
        bx.set_xlabel("measured Z")
        bx.set_ylabel("predicted Z")
        bx.legend(fontsize=7, loc="upper left")
    return fig


def fit_inside(fig: Figure, *, pad: float = 4.0, rounds: int = 4) -> Figure:
    """Move and shrink every axes of ``fig`` (one affine map of their positions, so their alignment
    is kept) until each axis' tick labels and label lie at least ``pad`` pixels inside the canvas; the
    canvas keeps its size. Titles are left alone (a long title is not fixed by moving the axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    W, H = fig.bbox.width, fig.bbox.height
    for _ in range(rounds):
        renderer = canvas.get_renderer()
        boxes = [b for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                 if (b := axis.get_tightbbox(renderer)) is not None and b.width > 0 and b.height > 0]
        if not boxes:
            break
        x0, y0 = min(b.x0 for b in boxes), min(b.y0 for b in boxes)
        x1, y1 = max(b.x1 for b in boxes), max(b.y1 for b in boxes)
        left, right = max(pad - x0, 0.0) / W, max(x1 - (W - pad), 0.0) / W
        bottom, top = max(pad - y0, 0.0) / H, max(y1 - (H - pad), 0.0) / H
        if max(left, right, bottom, top) < 0.5 / max(W, H) or left + right > 0.5 or bottom + top > 0.5:
            break
        sx, sy = 1.0 - left - right, 1.0 - bottom - top
        for ax in fig.axes:
            p = ax.get_position()
            ax.set_position((left + p.x0 * sx, bottom + p.y0 * sy, p.width * sx, p.height * sy))
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG at its own dpi (pixel size = figsize * dpi), labels fitted inside
    (:func:`fit_inside`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fit_inside(fig)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path
