"""``python -m jaxforget.analyze``: goodness of fit, heatmaps, correlations and residual patterns.

    python -m jaxforget.analyze runs/default                 # a collected run: writes runs/default/analysis/
    python -m jaxforget.analyze Z.npy --out analysis_z --max-rank 8
    python -m jaxforget.analyze splits.pkl --sample-cols 5000 --seed 1

Writes to ``--out``: ``report.md`` (the figures and tables below, tied together), ``analysis.json``
(every number, the configuration, seeds and versions), ``fit_table.md``, and PNG figures:
``heatmap_sorted.png``, ``rank1_residual.png``, ``component_<r>.png``, ``r2_vs_rank.png``,
``task_distributions.png``, ``correlations_tasks.png`` / ``correlations_examples.png`` (when the run
has statistics), ``residual_blocks.png`` (when a block is found), ``r2_over_steps.png`` (when the run
has the per-step tensor). The same scalars and images go to TensorBoard under ``RUN/tb/analyze``
(``OUT/tb`` for a bare matrix file).

Every fit uses the measured entries only (finite Z; NaN = not measured), and where some are not measured
the console and the report say how many the fits used. A budgeted run (``collect --eval.budget``) also
holds ``Z_completed``, the completion's predictions of the entries not measured: those are never fitted
here; the completed matrix gets its own R² table (``completed_fit_table.md``) and sorted heatmap
(``completed_heatmap_sorted.png``), labelled as not measurements.

Run-directory files read besides ``forgetting.npz`` (all optional; a missing file or key only removes
the statistics it carries; ``collect`` writes them):

* ``forgetting.npz``: ``Z [M, N]``, ``task_names [M]``, ``example_ids [N]``, ``nll_before [N]`` (base
  NLL per example), ``Z_steps [M, T, N]`` with ``steps [T]`` (forgetting at intermediate steps),
  ``Z_completed [M, N]`` and ``measured [M, N]`` (a budgeted run).
* ``tasks.jsonl``, one JSON object per task: ``name`` (required, matches ``task_names``), ``source``
  (string), ``n_train``, ``n_train_tokens``, ``steps``, ``train_loss_before``, ``train_loss_after``,
  ``base_loss`` (numbers; ``train_loss_drop = before - after`` is derived).
* ``upstream.jsonl``, one JSON object per example: ``id`` (required, matches ``example_ids``),
  ``source`` (the domain; ``domain`` is accepted too), ``n_tokens``, ``nll_before``, ``text``.
* ``meta.json``: copied into ``analysis.json`` as ``run_meta``.

Lines are matched to rows / columns by name / id; files without names for the matrix (e.g. a
matrix saved without ``task_names``) are matched by line order when the counts agree.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import tyro

from jaxforget.cli import Range, above, at_least, check_ranges, closing, out_dir_error
from jaxforget.store import (MatrixData, atomic_write_json, check_output, load_matrix, output_settings,
                             read_json_object)

TASK_NUMERIC = ("train_loss_drop", "n_train_tokens", "base_loss", "n_train", "steps")
EXAMPLE_NUMERIC = ("nll_before", "n_tokens")


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """Analyse a forgetting matrix: R² of simple models, sorted heatmaps, correlations, residual blocks."""

    path: tyro.conf.Positional[Path]
    """Run directory, .npy, .npz, .csv, or the reference code's pickle (train_mat/test_mat); NaN = not measured."""
    out: Path | None = None
    """Output directory. Default: RUN/analysis for a run directory, analysis_<name>/ beside a file."""
    max_rank: int = 5
    """Largest rank k of the R² table (rank 1..k) and number of components drawn."""
    residual_rank: int = 1
    """Rank of the fit whose residual is searched for blocks (1 = the multiplicative model)."""
    max_blocks: int = 5
    """Most residual blocks reported (searched one after another; the fit is redone without each block found)."""
    block_permutations: int = 19
    """Copies of the residual, each row randomly rotated, forming the block-search null (p-value floor 1/(1+this))."""
    block_alpha: float = 0.05
    """A block is reported when its permutation p-value is at most this."""
    min_block_rows: int = 2
    """Fewest tasks in a block."""
    min_block_cols: int = 2
    """Fewest examples in a block."""
    sample_cols: int = 2000
    """Heatmaps show at most this many examples, a seeded random sample (0 = all). Numbers use all."""
    seed: int = 0
    """Seed of the column sample, the block-search null and masked fits' initialisation."""
    vmax: float | None = None
    """Colour range ±vmax of the heatmaps (the paper uses 0.5). Default: the --vmax-quantile of |Z|."""
    vmax_quantile: float = 0.99
    """Quantile of |Z| used as the colour range when --vmax is not given (robust to outliers)."""
    top_examples: int = 3
    """Example texts (or ids) shown per block."""
    drop_empty_rows: bool = False
    """Leave out tasks without any measured entry (e.g. failed rows) instead of stopping with an error."""
    tracker: Literal["tensorboard", "jsonl", "none"] = "tensorboard"
    """Also log scalars and images to: TensorBoard (RUN/tb/analyze or OUT/tb), OUT/events.jsonl, or none."""
    force: bool = False
    """Replace an output directory that holds an analysis made with other flags (refused otherwise)."""

    def validate(self) -> None:
        """Raise ValueError naming the flag when a value is out of range."""
        check_ranges(self, RANGES)  # every numeric flag: its range, NaN and inf refused
        error = out_dir_error(self.out_dir, "--out")
        if error:
            raise ValueError(error)

    @property
    def out_dir(self) -> Path:
        if self.out is not None:
            return self.out
        if self.path.is_dir():
            return self.path / "analysis"
        return self.path.with_name(f"analysis_{self.path.stem}")


RANGES: dict[str, Range] = {
    # every int/float flag (tests/test_robustness.py checks that none is missing)
    **dict.fromkeys(("max_rank", "residual_rank", "block_permutations", "min_block_rows", "min_block_cols"),
                    at_least(1)),
    **dict.fromkeys(("max_blocks", "sample_cols", "seed", "top_examples"), at_least(0)),
    "block_alpha": Range(0, 1, lo_open=True), "vmax": above(0), "vmax_quantile": Range(0, 1, lo_open=True),
}


# ----------------------------------------------------------------------------------------------
# Run-directory side files


@dataclasses.dataclass
class RunMetadata:
    """Statistics of a run aligned with the matrix; empty for a bare matrix file."""

    task_stats: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # name -> [M] (None = unknown)
    example_stats: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # name -> [N]
    texts: list[str | None] | None = None  # [N] upstream texts, when upstream.jsonl has them
    Z_steps: np.ndarray | None = None  # [M, T, N]
    steps: list[int] | None = None  # [T]
    meta: dict[str, Any] | None = None
    files: list[str] = dataclasses.field(default_factory=list)  # side files read, for the report
    notes: list[str] = dataclasses.field(default_factory=list)  # how lines were matched, what was skipped


def _read_jsonl(path: Path, key: str) -> list[dict[str, Any]]:
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON lines") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or key not in record:
            raise ValueError(f"{path}, line {lineno}: expected a JSON object with a {key!r} field")
        records.append(record)
    return records


def _align(records: list[dict], key: str, names: list[str], path: Path, what: str,
           notes: list[str]) -> list[dict]:
    """Records in matrix order: by name, or by line order when the matrix has no names for them."""
    by_name: dict[str, dict] = {}
    for record in records:
        by_name.setdefault(str(record[key]), record)
    if all(name in by_name for name in names):
        return [by_name[name] for name in names]
    if len(records) == len(names) and not any(name in by_name for name in names):
        notes.append(f"{path.name}: no {key} matches the matrix's {what}; matched by line order")
        return records
    missing = next(name for name in names if name not in by_name)
    found = sum(name in by_name for name in names)
    raise ValueError(f"{path}: no line with {key} = {missing!r} ({found} of {len(names)} {what} found); "
                     f"each {what[:-1]} of the matrix needs one line")


def _number(record: dict | None, field: str, path: Path) -> float | None:
    if record is None or record.get(field) is None:
        return None
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: field {field!r} must be a number; got {value!r} (line for {record!r:.80})")
    return float(value)


def read_run_metadata(run_dir: Path, data: MatrixData) -> RunMetadata:
    """Task and example statistics, upstream texts and the per-step tensor of a run directory (see the
    module docstring for the files and keys). Tolerates any of them being absent."""
    md = RunMetadata()
    M, N = data.Z.shape
    npz = run_dir / "forgetting.npz"
    with np.load(npz, allow_pickle=False) as f:
        if "nll_before" in f:
            nll = np.asarray(f["nll_before"], np.float64)
            if nll.shape != (N,):
                raise ValueError(f"{npz}: nll_before has shape {nll.shape}; expected ({N},)")
            md.example_stats["nll_before"] = [float(v) if np.isfinite(v) else None for v in nll]
        if "Z_steps" in f:
            Zs = np.asarray(f["Z_steps"], np.float32)
            if Zs.ndim != 3 or Zs.shape[0] != M or Zs.shape[2] != N:
                raise ValueError(f"{npz}: Z_steps has shape {Zs.shape}; expected ({M}, T, {N})")
            md.Z_steps = Zs
            md.steps = [int(s) for s in f["steps"]] if "steps" in f else list(range(Zs.shape[1]))
            if len(md.steps) != Zs.shape[1]:
                raise ValueError(f"{npz}: steps has {len(md.steps)} entries for Z_steps with {Zs.shape[1]} steps")
    tasks_path = run_dir / "tasks.jsonl"
    if tasks_path.exists():
        md.files.append(tasks_path.name)
        tasks = _align(_read_jsonl(tasks_path, "name"), "name", data.row_names, tasks_path, "tasks", md.notes)
        before = [_number(t, "train_loss_before", tasks_path) for t in tasks]
        after = [_number(t, "train_loss_after", tasks_path) for t in tasks]
        stats = {"train_loss_drop": [None if b is None or a is None else b - a for b, a in zip(before, after)]}
        for field in TASK_NUMERIC[1:]:
            stats[field] = [_number(t, field, tasks_path) for t in tasks]
        stats["source"] = [None if t.get("source") is None else str(t["source"]) for t in tasks]
        md.task_stats = {k: v for k, v in stats.items() if any(x is not None for x in v)}
    upstream_path = run_dir / "upstream.jsonl"
    if upstream_path.exists():
        md.files.append(upstream_path.name)
        ups = _align(_read_jsonl(upstream_path, "id"), "id", data.col_ids, upstream_path, "examples", md.notes)
        stats = {field: [_number(u, field, upstream_path) for u in ups] for field in EXAMPLE_NUMERIC}
        if "nll_before" in md.example_stats and not any(v is not None for v in stats["nll_before"]):
            stats["nll_before"] = md.example_stats["nll_before"]  # from forgetting.npz
        domain = [u.get("source", u.get("domain")) for u in ups]
        stats["source"] = [None if d is None else str(d) for d in domain]
        md.example_stats = {k: v for k, v in stats.items() if any(x is not None for x in v)}
        if any(u.get("text") for u in ups):
            md.texts = [None if u.get("text") is None else str(u["text"]) for u in ups]
    meta_path = run_dir / "meta.json"
    if meta_path.exists():
        md.files.append(meta_path.name)
        md.meta = read_json_object(meta_path, "the meta.json of a jaxforget run")
    return md


# ----------------------------------------------------------------------------------------------
# The analysis


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _r2_markdown(r2: dict[str, float]) -> str:
    from jaxforget.analysis import r2_label

    return _md_table(["model", "R²"], [[r2_label(k), v] for k, v in r2.items()])


def _component_r2(r2: dict[str, float], r: int) -> str:
    """How much component r adds, in the centred R² of the R² table (the scale every other figure and
    table uses): the rank-r fit's R² and its gain over rank r - 1."""
    now, before = r2.get(f"rank_{r}"), r2.get(f"rank_{r - 1}")
    if now is None:
        return "R² not computed"
    return f"R² of rank {r} {now:.3f}" + ("" if before is None else f" (+{now - before:.3f} over rank {r - 1})")


def _fmt_p(p: float | None) -> str:
    """A p-value: two decimals down to 0.01, then scientific (``3.2e-05``), never ``0.00``; a p-value
    that underflows float64 is ``< 1e-300``."""
    if p is None or not np.isfinite(p):
        return "–"
    if p >= 0.01:
        return f"{p:.2f}"
    return f"{p:.1e}" if p > 0 else "< 1e-300"


def _corr_markdown(rows: list[dict]) -> str:
    return _md_table(
        ["effect", "statistic", "n", "Pearson r", "p", "Spearman ρ", "p"],
        [[r["effect"], r["statistic"] + (f" = {r['level']}" if r["level"] is not None else ""), r["n"],
          r["pearson"], _fmt_p(r["pearson_p"]), r["spearman"], _fmt_p(r["spearman_p"])] for r in rows])


def _note(row: dict) -> str:
    return f"Pearson {_fmt(row['pearson'], 2)} (p {_fmt_p(row['pearson_p'])}), " \
           f"Spearman {_fmt(row['spearman'], 2)} (p {_fmt_p(row['spearman_p'])})"


def _versions() -> dict[str, str]:
    import jax
    import matplotlib

    return dict(python=platform.python_version(), jax=jax.__version__, numpy=np.__version__,
                matplotlib=matplotlib.__version__, backend=jax.default_backend())


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def analyze(data: MatrixData, config: AnalyzeConfig, metadata: RunMetadata | None = None) -> dict[str, Any]:
    """Run the whole analysis of ``data`` and write the outputs to ``config.out_dir``; returns what
    ``analysis.json`` holds (plus ``files``: the written paths relative to the output directory)."""
    from jaxforget import analysis as A
    from jaxforget import viz
    from jaxforget.completion import prepare
    from jaxforget.tracking import open_tracker

    config.validate()
    md = metadata or RunMetadata()
    out = config.out_dir
    Z = np.asarray(data.Z, np.float32)
    M, N = Z.shape
    try:
        Z0, mask = prepare(Z)
    except ValueError as e:
        empty = np.flatnonzero(~np.isfinite(Z).any(axis=1))
        named = ", ".join(f"{i} ({data.row_names[i]})" for i in empty[:10])
        raise ValueError(f"{data.source}: {e}" + (f"; rows without a measured entry: {named}" if empty.size else "")) \
            from None
    if config.residual_rank > min(M, N):
        raise ValueError(f"--residual-rank {config.residual_rank} exceeds min(tasks, examples) = {min(M, N)}")
    mask_np = np.asarray(mask)
    coverage = data.coverage()
    incomplete = coverage["n_measured"] < coverage["n_entries"] or data.Z_completed is not None
    out.mkdir(parents=True, exist_ok=True)  # only once the input is known to be usable
    files: list[str] = []

    def save(fig, name: str) -> str:
        viz.save_png(fig, out / name)
        files.append(name)
        return name

    # Goodness of fit and the effects.
    good = A.goodness(Z0, mask, max_rank=config.max_rank, seed=config.seed)
    k = min(config.max_rank, M, N)
    not_computed, limit_notes = _small_matrix_limits(M, N, config, k, bool(md.task_stats))
    if coverage["n_disagree"]:
        limit_notes.append(f"the file's `measured` mask disagrees with Z's NaN on {coverage['n_disagree']:,} "
                           "entries; the finite entries of Z are taken as the measured ones")
    U, s, V = A.components(A.rank_fit(Z0, mask, rank=k, seed=config.seed))
    fit1 = A.rank_fit(Z0, mask, rank=1, seed=config.seed)
    U1, s1, V1 = A.components(fit1)
    alpha, beta = U1[:, 0] * s1[0], V1[:, 0]
    row_order, col_order = A.effect_order(alpha, beta)
    rank1 = np.asarray(fit1.predict())

    # Displayed columns: all, or a seeded sample, then sorted by beta.
    if config.sample_cols and N > config.sample_cols:
        sample = np.random.default_rng(config.seed).choice(N, config.sample_cols, replace=False)
        shown = sample[np.argsort(-beta[sample], kind="stable")]
        sample_note = f"{len(shown):,} of {N:,} examples (random sample, seed {config.seed})"
    else:
        shown = col_order
        sample_note = f"all {N:,} examples"
    Zn = np.where(mask_np, Z, np.nan)
    vmax = config.vmax or viz.symmetric_range(Zn, config.vmax_quantile)
    sub = np.ix_(row_order, shown)
    residual1 = Zn - rank1
    sorted_names = [data.row_names[i] for i in row_order]
    only = "\nmeasured entries only (grey: not measured)" if incomplete else ""
    save(viz.heatmap(Zn[sub], vmax=vmax, row_labels=sorted_names,
                     title=f"Z sorted by task effect α (rows) and example effect β (columns); {sample_note}{only}"),
         "heatmap_sorted.png")
    save(viz.panels([("Z", Zn[sub]), (f"rank-1 fit α·β (R² {good['r2']['multiplicative']:.3f})", rank1[sub]),
                     ("residual Z − α·β", residual1[sub])], vmax=vmax, row_labels=sorted_names,
                    suptitle=f"Multiplicative fit and residual, sorted by α and β; {sample_note}"),
         "rank1_residual.png")
    for r in range(k):
        comp = s[r] * np.outer(U[:, r], V[:, r])
        save(viz.heatmap(
            comp[sub], vmax=float(np.quantile(np.abs(comp[sub]), config.vmax_quantile)) or 1.0,
            title=f"component {r + 1} of the rank-{k} fit: σ = {s[r]:.3g}; {_component_r2(good['r2'], r + 1)}; "
                  f"{sample_note}",
            row_labels=sorted_names, cbar_label=f"component {r + 1} = σ u vᵀ (change in log-perplexity)"),
            f"component_{r + 1}.png")
    save(viz.r2_curve(good["r2"], labels=A.R2_LABELS), "r2_vs_rank.png")
    per_task = mask_np.sum(axis=1)
    over = (f"its measured examples ({per_task.min():,}–{per_task.max():,} of {N:,})" if incomplete
            else f"{N:,} examples")
    save(viz.task_distributions(Zn[row_order], sorted_names,
                                title=f"Forgetting per task over {over} (tasks sorted by α)"),
         "task_distributions.png")

    # Correlations of the effects with run statistics.
    task_stats = {} if "task_correlations" in not_computed else md.task_stats
    task_corr = A.correlate_effects(alpha, task_stats, effect_name="alpha") if task_stats else []
    example_corr = A.correlate_effects(beta, md.example_stats, effect_name="beta") if md.example_stats else []
    for effect, stats, rows, name in (("α (task effect)", task_stats, task_corr, "correlations_tasks.png"),
                                      ("β (example effect)", md.example_stats, example_corr,
                                       "correlations_examples.png")):
        if not stats:
            continue
        y = alpha if rows[0]["effect"] == "alpha" else beta
        tasks = rows[0]["effect"] == "alpha"
        by_stat = {r["statistic"]: r for r in rows if r["level"] is None}
        panel_list = [viz.Panel(values, y, stat, effect, _note(by_stat[stat]) if stat in by_stat else "",
                                names=data.row_names if tasks else None)
                      for stat, values in stats.items()]
        constant = [p.xlabel for p in panel_list if not viz.informative(p)]  # nothing to correlate: no panel
        panel_list = [p for p in panel_list if viz.informative(p)]
        if not panel_list:
            continue
        scale = ("α_i: task i's weight in the rank-1 fit Z ≈ α_i β_j, β of unit length (α in Z units × √N); "
                 "larger α, more forgetting" if tasks else
                 "β_j: example j's weight in the rank-1 fit Z ≈ α_i β_j, of unit length over the N examples; larger "
                 "β, more forgotten")
        save(viz.scatter_grid(panel_list, title=f"{effect} against run statistics", subtitle=scale + (
            f"; the same for every {'task' if tasks else 'example'}, so not shown: {', '.join(constant)}"
            if constant else "")), name)

    # Residual blocks after the rank-r fit (refitted without each block found).
    search = A.find_blocks(Z0, mask, rank=config.residual_rank, max_blocks=config.max_blocks,
                           n_permutations=config.block_permutations, alpha=config.block_alpha,
                           min_rows=config.min_block_rows, min_cols=config.min_block_cols,
                           seed=config.seed) if config.max_blocks and "blocks" not in not_computed else None
    blocks = _block_records(search, data, md, config.top_examples) if search else []
    if blocks:
        fig, _ = viz.block_heatmap(search.residual, [(b.rows, b.cols) for b in search.blocks],
                                   vmax=viz.symmetric_range(search.residual, config.vmax_quantile),
                                   title=f"Residual of the rank-{config.residual_rank} fit without the blocks' "
                                         "entries; blocks outlined",
                                   max_cols=config.sample_cols or N, seed=config.seed)
        save(fig, "residual_blocks.png")

    # Forgetting over fine-tuning steps.
    over_steps = A.r2_over_steps(md.Z_steps, md.steps) if md.Z_steps is not None else None
    if over_steps:
        save(viz.r2_over_steps([r["step"] for r in over_steps], [r["r2_rank1"] for r in over_steps],
                               [r["mean"] for r in over_steps]), "r2_over_steps.png")

    # A budgeted run's completed matrix: measurements plus a model's predictions, shown apart.
    completed = None
    if data.Z_completed is not None:
        completed = analyze_completed(data.Z_completed, config, coverage, order=(row_order, shown),
                                      vmax=vmax, sample_note=sample_note, row_names=sorted_names, save=save)
        if completed is None:
            not_computed["completed"] = ("the completed matrix (Z_completed): a task has no finite entry in it "
                                         "(a failed row); --drop-empty-rows leaves such tasks out")

    if config.tracker == "tensorboard":
        tb_path = config.path / "tb" / "analyze" if config.path.is_dir() else out / "tb"
    else:
        tb_path = out / "events.jsonl"
    result = dict(
        source=data.source, shape=[M, N], counts=good["counts"], moments=good["moments"], fit_method=good["method"],
        r2=good["r2"], singular_values=s, alpha=alpha, beta=beta,
        display=dict(vmax=vmax, columns=sample_note, sample_seed=config.seed if len(shown) < N else None),
        correlations=dict(tasks=task_corr, examples=example_corr),
        blocks=dict(residual_rank=config.residual_rank, seed=config.seed, permutations=config.block_permutations,
                    alpha=config.block_alpha, threshold=search.threshold if search else None,
                    null_scores=search.null_scores if search else None, found=blocks),
        over_steps=over_steps, run_files=md.files, notes=md.notes + limit_notes, not_computed=not_computed,
        run_meta=md.meta,
        **({"coverage": dict(coverage, fit_note=fit_note(coverage, data.Z_completed is not None))}
           if incomplete else {}),  # a full matrix's analysis.json stays as it was
        **({"completed": completed} if completed is not None else {}),
        config={f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, versions=_versions(),
        flags=output_settings(config, leave_out=FLAGS_LEFT_OUT),
        tracker=dict(kind=config.tracker, path=None if config.tracker == "none" else str(tb_path)),
    )
    fit_md = _r2_markdown(good["r2"])
    (out / "fit_table.md").write_text(fit_md + "\n", encoding="utf-8")
    files.append("fit_table.md")
    if completed is not None:
        (out / COMPLETED_TABLE).write_text(_r2_markdown(completed["r2"]) + "\n", encoding="utf-8")
        files.append(COMPLETED_TABLE)
    report = render_report(result, fit_md, files, md)
    (out / "report.md").write_text(report, encoding="utf-8")
    files += ["report.md", "analysis.json"]
    result["files"] = files
    atomic_write_json(out / "analysis.json", _json_safe(result))

    with open_tracker(config.tracker, tb_path) as tracker:
        log_analysis(tracker, result, report, out, Z[mask_np])
    return result


COMPLETED_HEATMAP = "completed_heatmap_sorted.png"
COMPLETED_TABLE = "completed_fit_table.md"
"""The completed matrix's figure and table: named apart from heatmap_sorted.png / fit_table.md, which are
measurements."""


def estimated_r2_note(estimated: dict[str, float]) -> str:
    """The line a budgeted run's R² gets: the whole matrix's R² by rank as collect estimated it from the measured
    entries (``sampled_rank_r2``, meta.json ``budget.r2_estimated``), beside the fits below, which are fitted and
    scored on the measured entries themselves and so overstate the higher ranks at a small budget."""
    from jaxforget.analysis import r2_label

    values = ", ".join(f"{r2_label(k)} {v:.3f}" for k, v in estimated.items())
    return ("R² of the whole matrix, estimated from the measured entries (collect's sampled_rank_r2: "
            f"docs/collect.md, \"Budget\"): {values}. The table below fits and scores rank-k models on the "
            "measured entries themselves, which overstates the higher ranks when few entries are measured")


def fit_note(coverage: dict[str, int], has_completed: bool) -> str:
    """How many entries the fits used: ``fitted on 12,345 of 170,000 entries (7.3%) measured; 8,500
    completed entries not used`` (the last part for a file with Z_completed)."""
    n, total = coverage["n_measured"], coverage["n_entries"]
    text = f"fitted on {n:,} of {total:,} entries ({n / total:.1%}) measured"
    return text + (f"; {coverage['n_completed']:,} completed entries not used" if has_completed else "")


def analyze_completed(Z_completed: np.ndarray, config: AnalyzeConfig, coverage: dict[str, int], *,
                      order: tuple[np.ndarray, np.ndarray], vmax: float, sample_note: str,
                      row_names: list[str], save: Callable[[Any, str], str]) -> dict[str, Any] | None:
    """The R² table of ``Z_completed [M, N]`` (the same fits as the measured table, on every finite
    entry) and its heatmap in the measured heatmap's order (``order``: rows, shown columns), saved
    as :data:`COMPLETED_HEATMAP`; None when a row of it has no finite entry. Its entries are a
    completion's predictions where Z is NaN, so nothing here is a measurement."""
    from jaxforget import analysis as A
    from jaxforget import viz

    Zc = np.asarray(Z_completed, np.float32)
    if not np.isfinite(Zc).any(axis=1).all():
        return None
    good = A.goodness(Zc, max_rank=config.max_rank, seed=config.seed)
    n_pred = coverage["n_completed"]
    save(viz.heatmap(Zc[np.ix_(*order)], vmax=vmax, row_labels=row_names,
                     cbar_label="Z_completed: measured + predicted (change in log-perplexity)",
                     title=f"Z_completed, NOT measurements: {n_pred:,} of {Zc.size:,} entries are the completion's "
                           f"predictions\nrows, columns and colours as in heatmap_sorted.png; {sample_note}"),
         COMPLETED_HEATMAP)
    return dict(r2=good["r2"], fit_method=good["method"], n_entries=int(good["counts"]["n_observed"]),
                n_predicted=n_pred, files=[COMPLETED_HEATMAP, COMPLETED_TABLE])


def _block_records(search, data: MatrixData, md: RunMetadata, top_examples: int) -> list[dict[str, Any]]:
    """The blocks of a :class:`jaxforget.analysis.BlockSearch` as report records: task names, the
    examples with the largest residual (with their texts), and the domain over-representation test."""
    from jaxforget import analysis as A

    domains = md.example_stats.get("source")
    records = []
    for b in search.blocks:
        in_block = np.zeros(data.Z.shape[1], bool)
        in_block[b.cols] = True
        col_mean = np.nanmean(search.residual[np.ix_(b.rows, b.cols)], axis=0) * b.sign
        top = b.cols[np.argsort(-np.nan_to_num(col_mean, nan=-np.inf), kind="stable")[:top_examples]]
        records.append(dict(
            tasks=[data.row_names[i] for i in b.rows], rows=b.rows, cols=b.cols,
            n_tasks=len(b.rows), n_examples=len(b.cols), sign=b.sign, mean_residual=b.mean_residual,
            score=b.score, p_value=b.p_value, n_observed=b.n_observed,
            top_examples=[dict(id=data.col_ids[j], text=(md.texts[j] if md.texts else None)) for j in top],
            domain_enrichment=A.domain_enrichment(in_block, domains) if domains else None,
        ))
    return records


def log_analysis(tracker, result: dict[str, Any], report: str, out: Path, entries: np.ndarray) -> None:
    """The analysis' scalars (``r2/*``, ``z/*``, ``over_steps/*`` by step), its figures
    (``analyze/<name>``), histograms of the effects and of Z's measured ``entries``, the report as
    text and the configuration as hparams."""
    tracker.scalars(result["r2"], prefix="r2/")
    if "completed" in result:
        tracker.scalars(result["completed"]["r2"], prefix="completed_r2/")
    tracker.scalars(result["moments"], prefix="z/")
    for row in result["over_steps"] or []:
        if row["r2_rank1"] is not None:
            tracker.scalar("over_steps/r2_rank1", row["r2_rank1"], row["step"])
        if row["mean"] is not None:
            tracker.scalar("over_steps/mean", row["mean"], row["step"])
    for name in result["files"]:
        if name.endswith(".png"):
            tracker.image(f"analyze/{name[:-4]}", out / name)
    tracker.histogram("effects/alpha", result["alpha"])
    tracker.histogram("effects/beta", result["beta"])
    tracker.histogram("z/entries", entries)
    tracker.text("analyze/report", report)
    tracker.hparams({k: v for k, v in result["config"].items() if k not in ("path", "out")},
                    {f"r2/{k}": v for k, v in result["r2"].items()})


def render_report(result: dict[str, Any], fit_md: str, files: list[str], md: RunMetadata) -> str:
    """``report.md``: the tables and the figures in ``files`` (only those are linked)."""
    have = set(files)
    c, m = result["counts"], result["moments"]
    lines = [f"# Forgetting analysis of `{result['source']}`", ""]
    lines += [f"{_count(c['n_tasks'], 'task')} × {_count(c['n_examples'], 'upstream example')}; "
              f"{c['n_observed']:,} entries measured, "
              f"{c['n_missing']:,} not measured (NaN; ignored by every fit) in {c['rows_with_missing']} rows and "
              f"{c['cols_with_missing']} columns. Mean Z {m['mean']:.4g}, standard deviation {m['std']:.4g}, "
              f"{m['frac_nonneg']:.1%} of entries ≥ 0.", ""]
    budget = (md.meta or {}).get("budget")
    if isinstance(budget, dict):
        lines += [f"A budgeted run (`collect --eval.budget {budget.get('fraction')} --eval.select "
                  f"{budget.get('select', '?')}`, {budget.get('anchors', '?')} anchor columns measured for every "
                  "task): a model completed the entries not measured; its completions are never fitted as "
                  "measurements (they are shown apart, under \"The completed matrix\").", ""]
        if budget.get("r2_estimated"):
            lines += [estimated_r2_note(budget["r2_estimated"]), ""]
    if "coverage" in result:
        lines += [f"Every fit below uses the measured entries only: {result['coverage']['fit_note']}.", ""]
    for note in result["notes"]:
        lines += [f"Note: {note}.", ""]
    for note in result["not_computed"].values():
        lines += [f"Not computed: {note}.", ""]

    def image(name: str, alt: str) -> None:
        if name in have:
            lines.extend([f"![{alt}]({name})", ""])

    method = "truncated SVD" if result["fit_method"] == "truncated_svd" else "masked uncentred factorisation"
    lines += ["## How much of Z simple models explain", "",
              f"R² over all measured entries ({method} for rank k).", "", fit_md, ""]
    image("r2_vs_rank.png", "R² versus rank")
    lines += ["## Z sorted by the fitted effects", "",
              f"Rows by task effect α, columns by example effect β (multiplicative fit); colour range "
              f"±{result['display']['vmax']:.3g}; {result['display']['columns']}.", ""]
    image("heatmap_sorted.png", "sorted heatmap")
    image("rank1_residual.png", "rank-1 fit and residual")
    lines += ["## Leading components", ""]
    for name in sorted((f for f in files if f.startswith("component_")), key=lambda f: int(f[10:-4])):
        image(name, name[:-4].replace("_", " "))
    lines += ["## Forgetting per task", ""]
    image("task_distributions.png", "per-task distributions")

    lines += ["## Correlations with run statistics", ""]
    corr = result["correlations"]
    if not corr["tasks"] and not corr["examples"]:
        lines += ["No task or example statistics: the input is a bare matrix (or its run directory has no "
                  "`tasks.jsonl` / `upstream.jsonl` / `nll_before`), so there is nothing to correlate.", ""]
    else:
        lines += ["Pearson and Spearman correlations, two-sided p-values (t distribution, n − 2 df); "
                  "categorical statistics as the 0/1 indicator of each level.", ""]
        lines += [_corr_markdown(corr["tasks"] + corr["examples"]), ""]
        image("correlations_tasks.png", "task effect against task statistics")
        image("correlations_examples.png", "example effect against example statistics")

    b = result["blocks"]
    lines += ["## Residual patterns", ""]
    if "blocks" in result["not_computed"]:
        lines += [f"Not computed: {result['not_computed']['blocks']}.", ""]
    elif b["threshold"] is None:
        lines += ["Block search disabled (`--max-blocks 0`).", ""]
    else:
        lines += [f"Blocks of tasks × examples whose residual after the rank-{b['residual_rank']} fit stays large "
                  f"(searched one after another, the fit redone without the blocks already found): "
                  f"score = Σ residual / √(tasks · examples), kept when its permutation p-value "
                  f"(against {b['permutations']} residuals with each row randomly rotated, seed {b['seed']}; "
                  f"largest null score {b['threshold']:.3g}) is ≤ {b['alpha']}.", ""]
        if not b["found"]:
            lines += ["No significant block.", ""]
        for i, blk in enumerate(b["found"], 1):
            direction = "more" if blk["sign"] > 0 else "less"
            tasks = ", ".join(f"`{t}`" for t in blk["tasks"][:20]) + (" …" if blk["n_tasks"] > 20 else "")
            lines += [f"### Block {i}: {blk['n_tasks']} tasks × {blk['n_examples']} examples", "",
                      f"{direction} forgetting than the fit predicts: mean residual {blk['mean_residual']:.4g} over "
                      f"{blk['n_observed']} measured entries; score {blk['score']:.3g}, p = {blk['p_value']:.3g}.", "",
                      f"Tasks: {tasks}", ""]
            if blk["top_examples"]:
                lines += ["Examples with the largest residual in the block:", ""]
                for ex in blk["top_examples"]:
                    text = ex["text"]
                    shown = f": {' '.join(text.split())[:200]}" if text else ""
                    lines.append(f"- `{ex['id']}`{shown}")
                lines.append("")
            if blk["domain_enrichment"]:
                lines += ["Domains among the block's examples (two-proportion z-test, one-sided):", "",
                          _md_table(["domain", "in block", "share in block", "share elsewhere", "z", "p"],
                                    [[d["domain"], d["n_block"], d["frac_block"], d["frac_rest"], d["z"], d["p"]]
                                     for d in blk["domain_enrichment"]]), ""]
        image("residual_blocks.png", "residual with blocks")

    if "completed" in result:
        c = result["completed"]
        lines += ["## The completed matrix (not measurements)", "",
                  f"`Z_completed` is Z with its {c['n_predicted']:,} unmeasured entries filled in by the run's "
                  "matrix completion. None of the analysis above uses it. Its R² below pools measurements and a "
                  "model's predictions, so it describes the completion as much as forgetting: quote the measured "
                  "table above.", "",
                  f"R² over all {c['n_entries']:,} finite entries of Z_completed "
                  f"([{COMPLETED_TABLE}]({COMPLETED_TABLE})):", "", _r2_markdown(c["r2"]), ""]
        image(COMPLETED_HEATMAP, "Z_completed sorted as Z: not measurements")

    if result["over_steps"]:
        lines += ["## Forgetting over fine-tuning steps", "",
                  _md_table(["step", "R² rank 1", "mean Z", "measured"],
                            [[r["step"], r["r2_rank1"], r["mean"], r["n_observed"]] for r in result["over_steps"]]), ""]
        image("r2_over_steps.png", "R² over steps")

    lines += ["## Reproduce", "", "```", "python -m jaxforget.analyze " + _command_line(result["config"]), "```", "",
              "All numbers, seeds and versions: [analysis.json](analysis.json); the R² table alone: "
              "[fit_table.md](fit_table.md)." + (f" Run files read: {', '.join(md.files)}." if md.files else ""), ""]
    return "\n".join(lines)


def _command_line(config: dict[str, Any]) -> str:
    defaults = AnalyzeConfig(path=Path("."))
    parts = [str(config["path"])]
    for key, value in config.items():
        if key not in ("path", "force") and value != getattr(defaults, key):
            parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def _small_matrix_limits(M: int, N: int, config: AnalyzeConfig, k: int,
                         has_task_stats: bool) -> tuple[dict[str, str], list[str]]:
    """What a matrix of M tasks x N examples is too small for, in the user's terms (how many tasks it
    takes, the flag to change), as ``({"blocks" | "task_correlations": reason}, notes)``; the notes
    name the R² rows that are 1 by construction."""
    skipped, notes = {}, []
    tasks, examples = f"{M} task{'s' * (M != 1)}", f"{N} example{'s' * (N != 1)}"
    if config.max_blocks and (M < config.min_block_rows or N < config.min_block_cols):
        skipped["blocks"] = (f"residual blocks: a block needs at least {config.min_block_rows} tasks and "
                             f"{config.min_block_cols} examples (--min-block-rows / --min-block-cols); the matrix "
                             f"has {tasks} and {examples}")
    if has_task_stats and M < 3:
        skipped["task_correlations"] = (f"correlations of the task effect α with task statistics: they need at least "
                                        f"3 tasks; the matrix has {tasks}")
    if k == min(M, N):
        exact = [f"rank {k}"] + (["column mean only"] if M == 1 else []) + (["row mean only"] if N == 1 else [])
        notes.append(f"with {tasks} and {examples}, {' and '.join(exact)} reproduce{'s' * (len(exact) == 1)} Z "
                     f"exactly: R² 1 by construction, not a finding")
    return skipped, notes


def drop_empty_rows(data: MatrixData, md: RunMetadata) -> tuple[MatrixData, RunMetadata]:
    """``data`` and ``md`` without the rows that have no measured entry (noted in ``md.notes``)."""
    keep = np.isfinite(data.Z).any(axis=1)
    if keep.all():
        return data, md
    dropped = [data.row_names[i] for i in np.flatnonzero(~keep)]
    idx = np.flatnonzero(keep)
    data = dataclasses.replace(
        data, Z=data.Z[keep], row_names=[data.row_names[i] for i in idx], test_rows=None,
        Z_completed=None if data.Z_completed is None else data.Z_completed[keep],
        measured=None if data.measured is None else data.measured[keep])
    md = dataclasses.replace(
        md, task_stats={k: [v[i] for i in idx] for k, v in md.task_stats.items()},
        Z_steps=None if md.Z_steps is None else md.Z_steps[keep],
        notes=md.notes + [f"left out {len(dropped)} task(s) without any measured entry: {', '.join(dropped[:20])}"])
    return data, md


FLAGS_LEFT_OUT = ("out", "force", "tracker")
"""Flags that do not change analyze's files (the tracker writes elsewhere)."""


def main(config: AnalyzeConfig) -> dict[str, Any]:
    config.validate()
    # the one rule on outputs: the same flags replace their analysis, other flags need --force
    check_output(config.out_dir / "analysis.json", output_settings(config, leave_out=FLAGS_LEFT_OUT),
                 force=config.force)
    data = load_matrix(config.path)
    metadata = read_run_metadata(config.path, data) if config.path.is_dir() else RunMetadata()
    if config.drop_empty_rows:
        data, metadata = drop_empty_rows(data, metadata)
    M, N = data.Z.shape
    print(f"matrix {data.source}: {_count(M, 'task')} x {_count(N, 'example')}, "
          f"{int(np.sum(~np.isfinite(data.Z)))} not measured"
          + (f"; run files: {', '.join(metadata.files)}" if metadata.files else ""), flush=True)
    result = analyze(data, config, metadata)
    if "coverage" in result:
        print(result["coverage"]["fit_note"])
    estimated = ((metadata.meta or {}).get("budget") or {}).get("r2_estimated")
    if estimated:
        print(estimated_r2_note(estimated))
    print(_r2_markdown(result["r2"]))
    if "completed" in result:
        print(f"completed matrix (Z_completed: {result['completed']['n_predicted']:,} entries are a completion's "
              f"predictions, NOT measurements; {COMPLETED_TABLE}, {COMPLETED_HEATMAP}):")
        print(_r2_markdown(result["completed"]["r2"]))
    for note in result["notes"]:
        print(f"note: {note}")
    for reason in result["not_computed"].values():
        print(f"not computed: {reason}")
    if "blocks" not in result["not_computed"]:
        print(f"{len(result['blocks']['found'])} residual block(s)")
    out = config.out_dir
    pngs = [f for f in result["files"] if f.endswith(".png")]
    wrote = [out / "report.md", out / "analysis.json", out / "fit_table.md",
             *([out / COMPLETED_TABLE] if "completed" in result else []),
             f"{out}/ ({len(pngs)} figures: {', '.join(pngs[:3])}{', ...' if len(pngs) > 3 else ''})"]
    if result["tracker"]["path"]:
        wrote.append(result["tracker"]["path"] + (" (TensorBoard)" if config.tracker == "tensorboard" else ""))
    print(closing(wrote, first=out / "report.md",
                  next_steps=[f"python -m jaxforget.predict --matrix {config.path}   (can forgetting be predicted?)"]))
    return result


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    from jaxforget.cli import run

    return run(AnalyzeConfig, main, argv)


if __name__ == "__main__":
    cli()
