"""``python -m jaxforget.predict``: benchmark forgetting prediction by matrix completion.

Runs the paper's protocol (train tasks fully measured; k revealed entries per test task; the rest
predicted) for several methods on one matrix and prints a table of method x metric, mean ± std over
seeds, with the trivial baselines (zero, train_mean, revealed_mean, column_mean, all_positive)
scored on the same hidden entries and each method's gain over the best of them; the same numbers,
per seed, go to a JSON file, and with ``--save-predictions`` every prediction goes to an npz.

The JSON file's default name is the method set (``RUN/predict/additive+knn_baseline+mf.json`` for a run
directory, ``predict_<name>/...`` beside a matrix file, ``predict_synthetic/...``): another method set
never replaces it. It records the flags that made it (``flags``); the same flags again replace it,
other flags are refused unless ``--force`` (the one rule of every command's outputs,
:func:`jaxforget.store.check_output`).

    python -m jaxforget.predict                                  # planted synthetic matrix
    python -m jaxforget.predict --matrix runs/default            # a collected run
    python -m jaxforget.predict --matrix Z.npy --split 0.25 --methods additive knn_baseline mf:rank=10
    python -m jaxforget.predict --matrix runs/default --methods additive knn_baseline mf rep_dot

``rep_dot`` (options ``rep_dot:steps=600,loss=binary,...``, see ``jaxforget.rep_dot.RepDotConfig``) is
the LM-based predictor baseline: it needs a collect run directory (the texts and the base model), is
trained on the train tasks' rows (one predictor per seed, seeded by it), predicts each test row from the
test task's text without the revealed entries, and is scored on the same hidden entries as the
completion methods. It also reports ``example_macro_f1``, the original paper's per-example macro F1
(F1 of each task example's own scores, averaged over examples); the completion methods predict one row
per task and have no per-example predictions, so their cell is "—".

Only measured entries (finite Z; NaN = not measured) are revealed and scored. A budgeted run's
``Z_completed`` (the completion's predictions of the entries its collect did not measure) is never read
as data: the console says how much of Z is measured, and the JSON records it (``measured``,
``completed_not_used``).
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Literal

import numpy as np

from jaxforget.cli import FINITE, Range, above, at_least, check_ranges, closing, out_dir_error
from jaxforget.store import MatrixData, atomic_write_json, atomic_write_npz, check_output, load_matrix, output_settings


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """Benchmark forgetting prediction (matrix completion) on one forgetting matrix."""

    matrix: Path | None = None
    """Run directory, .npy, .npz, .csv, or the reference code's pickle (train_mat/test_mat). Default: a planted
    synthetic matrix (see --synthetic-*)."""
    split: str | None = None
    """Test rows: a fraction of the rows (e.g. 0.25, drawn with --split-seed) or comma-separated row indices or
    row names. Default: the file's own split (reference pickles), else 0.25."""
    split_seed: int = 0
    """Seed of a fractional split."""
    methods: tuple[str, ...] = ("additive", "knn_baseline", "mf")
    """Methods, each NAME or NAME:option=value,...; names: additive, knn, knn_baseline, mf, svd (the reference
    code's surprise SVD by SGD, slow), soft_impute, logistic_mf, logistic_additive, and rep_dot (the LM-based
    predictor; needs a run directory). The baselines are always scored."""
    k: int = 30
    """Revealed entries per test task."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One reveal draw (and initialisation) per seed; the table reports mean ± std over them."""
    reveal: Literal["without_replacement", "reference"] = "without_replacement"
    """without_replacement: k distinct entries per test row. reference: the paper's code exactly
    (numpy.random.default_rng(seed).choice(N, k): with replacement, shared by all test rows)."""
    mode: Literal["refit", "fold_in"] = "refit"
    """refit: fit train rows + revealed entries per test task. fold_in: fit train rows once, fold each test row in."""
    binary: bool | None = None
    """Treat the matrix as 0/1 exact-match drop. Default: detected (all observed entries are 0 or 1)."""
    threshold: float | None = None
    """Forgotten means Z > threshold, for F1/precision/recall and the AUC labels; a prediction above it is a
    predicted "forgotten" (default 0; 0.5 for binary). On a real-valued Z the F1 depends on it and the
    all-positive baseline often scores high; AUC and precision@n do not depend on it."""
    top_n: int = 100
    """n of precision@n (top-n predicted vs top-n true hidden entries of each test task)."""
    clip: bool = False
    """Clip predictions to the range of the train entries (as scikit-surprise clips to its rating scale)."""
    solver: Literal["auto", "train_block", "joint"] = "auto"
    """train_block: solve each (seed, task) problem through its revealed entries against the train rows, prepared
    once (additive, knn, knn_baseline and ALS mf with fully measured train rows; the same estimator as joint,
    which refits the train rows + the test row per problem). auto: train_block where it applies, else joint."""
    memory: float | None = None
    """GiB a method's compiled program may use: its problems are batched to fit, by XLA's memory analysis.
    Default: half the memory available (the accelerator's, or on CPU the host's)."""
    batch_size: int | None = None
    """Solve this many (seed, task) problems at a time instead of sizing batches from --memory."""
    out: Path | None = None
    """JSON output. Default: named by the method set, e.g. RUN/predict/additive+knn_baseline+mf.json for a run
    directory, predict_<name>/<methods>.json beside a file, ./predict_synthetic/<methods>.json."""
    force: bool = False
    """Replace an output JSON written with other flags (refused otherwise)."""
    save_predictions: Path | None = None
    """Also write every prediction here (npz): per seed and test task the hidden and revealed masks, the truth,
    and each baseline's and method's predicted row (labels, kinds, predictions [L, S, T, N], pred_thresholds,
    truth, hidden, revealed, seeds, test_rows, test_tasks, example_ids, threshold, top_n, k), enough to
    recompute any metric of the table."""
    synthetic_rows: int = 85
    """Rows (tasks) of the synthetic matrix."""
    synthetic_cols: int = 2000
    """Columns (examples) of the synthetic matrix."""
    synthetic_seed: int = 0
    """Seed of the synthetic matrix."""


def resolve_test_rows(spec: str | None, data: MatrixData, seed: int) -> list[int]:
    """Test row indices from ``--split`` (fraction, indices or names) or the file's own split."""
    from jaxforget.completion import split_rows

    M = data.Z.shape[0]
    if spec is None:
        return data.test_rows if data.test_rows is not None else split_rows(M, 0.25, seed)[1]
    try:
        frac = float(spec)
    except ValueError:
        frac = None
    if frac is not None and "," not in spec and not spec.strip().isdigit():
        try:
            return split_rows(M, frac, seed)[1]
        except ValueError as e:
            raise ValueError(f"--split {spec}: {e}") from None
    index = {name: i for i, name in enumerate(data.row_names)}
    rows = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.lstrip("-").isdigit():
            i = int(item)
            if not 0 <= i < M:
                raise ValueError(f"--split: row {i} out of range (the matrix has {M} rows)")
            rows.append(i)
        elif item in index:
            rows.append(index[item])
        else:
            raise ValueError(f"--split: {item!r} is neither a row index nor a row name of {data.source}")
    return rows


def _default_out(config: PredictConfig) -> Path:
    """The output JSON when --out is not given: a directory per matrix, a file per method set."""
    if config.matrix is None:
        folder = Path("predict_synthetic")
    elif config.matrix.is_dir():
        folder = config.matrix / "predict"
    else:
        folder = config.matrix.with_name(f"predict_{config.matrix.stem}")
    return folder / f"{methods_slug(config.methods)}.json"


def methods_slug(methods: tuple[str, ...]) -> str:
    """A file name for a method set: the specs joined by '+', characters a file name should not hold
    replaced; a long one cut and told apart by a hash of the whole."""
    import hashlib
    import re

    slug = "+".join(re.sub(r"[^A-Za-z0-9_.=,-]+", "-", m.strip()) for m in methods)
    if len(slug) > 80:
        slug = f"{slug[:70]}-{hashlib.sha1('+'.join(methods).encode()).hexdigest()[:8]}"
    return slug


REP_DOT = "rep_dot"


def parse_methods(specs: tuple[str, ...]) -> tuple[list, list[tuple[str, object]]]:
    """(completion Methods, [(label, RepDotConfig)]) from ``--methods``; every name and option is checked
    here, before any work."""
    from jaxforget import completion
    from jaxforget.completion.protocol import parse_spec

    if not specs:
        raise ValueError("--methods: give at least one method")
    methods, rep = [], []
    for spec in specs:
        name, options = parse_spec(spec)
        if name == REP_DOT:
            from jaxforget.rep_dot import RepDotConfig

            label = spec.strip() if options else REP_DOT
            rep.append((label, RepDotConfig.from_options(options, reserved=("seed",))))
        else:
            methods.append(completion.Method(name, options))
    labels = [m.label for m in methods] + [label for label, _ in rep]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--methods: a method is listed twice ({labels})")
    return methods, rep


def main(config: PredictConfig) -> dict:
    import time

    import jax

    from jaxforget import completion

    methods, rep = parse_methods(config.methods)  # bad names fail before any work
    check_flags(config)
    out = config.out or _default_out(config)
    settings = output_settings(config, leave_out=("out", "force", "save_predictions", "batch_size", "memory"))
    check_output(out, settings, force=config.force)
    if rep and (config.matrix is None or not (config.matrix / "meta.json").exists()):
        raise ValueError(f"--methods {rep[0][0]}: the LM-based predictor needs --matrix RUN, a run directory of "
                         "`python -m jaxforget.collect` (its texts and base model); got "
                         f"{config.matrix or 'the synthetic matrix'}")
    if config.matrix is None:
        planted = completion.planted_matrix(config.synthetic_rows, config.synthetic_cols, seed=config.synthetic_seed)
        Z = planted.Z
        data = MatrixData(Z, [f"task{i}" for i in range(Z.shape[0])], [f"ex{j}" for j in range(Z.shape[1])],
                          f"synthetic(rows={config.synthetic_rows}, cols={config.synthetic_cols}, "
                          f"seed={config.synthetic_seed})")
    else:
        data = load_matrix(config.matrix)
    test_rows = resolve_test_rows(config.split, data, config.split_seed)
    finite = data.Z[np.isfinite(data.Z)]
    binary = config.binary if config.binary is not None else bool(np.all((finite == 0) | (finite == 1)))
    if binary and config.threshold is not None and not 0 <= config.threshold < 1:
        raise ValueError(f"--threshold {config.threshold}: the matrix is binary (0/1), so forgotten means "
                         "Z > threshold with a threshold in [0, 1); any other value puts every entry in one class")
    n_nan = int(np.sum(~np.isfinite(data.Z)))
    coverage = data.coverage()
    check_reveal(data, test_rows, config.k, config.reveal)
    print(f"matrix {data.source}: {data.Z.shape[0]} tasks x {data.Z.shape[1]} examples, {n_nan} not measured; "
          f"{len(test_rows)} test tasks ({_names_text([data.row_names[i] for i in test_rows])}), k={config.k}, "
          f"seeds={list(config.seeds)}, {'binary' if binary else 'real-valued'}", flush=True)
    if n_nan or data.Z_completed is not None:
        print(measured_line(coverage, data.Z_completed is not None), flush=True)
    if coverage["n_disagree"]:
        print(f"warning: the file's `measured` mask disagrees with Z's NaN on {coverage['n_disagree']:,} entries; "
              "the finite entries of Z are taken as the measured ones", flush=True)
    result = completion.evaluate(
        data.Z, test_rows=test_rows, methods=methods, k=config.k, seeds=config.seeds, reveal=config.reveal,
        mode=config.mode, binary=binary, threshold=config.threshold, top_n=config.top_n, clip=config.clip,
        batch_size=config.batch_size, solver=config.solver,
        memory=None if config.memory is None else int(config.memory * 2**30),
    )
    from jaxforget.completion.batching import Batching

    for label, how in result.settings["solvers"].items():
        plan = how.get("batching")
        batching = f": {Batching(**plan).describe()}" if plan else ""
        print(f"{label}: {how['solver']} solver{batching}; {result.seconds[label]:.1f} s", flush=True)
    if rep:
        from jaxforget import rep_dot

        def load(rcfg):
            return rep_dot.load_run(config.matrix, rcfg, echo=lambda *_: None)

        t0 = time.perf_counter()
        texts = load(rep[0][1])
        if texts.task_names != data.row_names or texts.example_ids != data.col_ids:
            raise ValueError(f"{config.matrix}: forgetting.npz and meta.json name different tasks or examples")
        print(f"rep_dot: {config.matrix} texts and base model loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        for label, rcfg in rep:
            if (rcfg.max_upstream_len, rcfg.max_task_len) != (rep[0][1].max_upstream_len, rep[0][1].max_task_len):
                texts = load(rcfg)
            rep_dot.add_to_protocol(result, texts.model, texts.data, data.Z, rcfg, label=label,
                                    echo=lambda msg: print(msg, flush=True))
    if config.reveal == "reference":
        warning = reference_shortfall(result, data.row_names, config.k)
        if warning:
            print(f"warning: {warning}", flush=True)
    print(result.table())
    report = dict(
        flags=settings, matrix=data.source, shape=list(data.Z.shape), not_measured=n_nan,
        measured=coverage["n_measured"],
        **({"completed_not_used": coverage["n_completed"]} if data.Z_completed is not None else {}),
        test_tasks=[data.row_names[i] for i in test_rows],
        config={f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
        versions=dict(python=platform.python_version(), jax=jax.__version__, numpy=np.__version__,
                      backend=jax.default_backend()),
        **result.to_json(),
    )
    atomic_write_json(out, report)
    if config.save_predictions is not None:
        arrays = result.arrays()
        arrays.update(test_tasks=np.array([data.row_names[i] for i in test_rows]), example_ids=np.array(data.col_ids))
        atomic_write_npz(config.save_predictions, **arrays)
        print(f"wrote {config.save_predictions} ({len(arrays['labels'])} predictors x {len(config.seeds)} seeds x "
              f"{len(test_rows)} test tasks x {data.Z.shape[1]} examples)")
    print(closing([out, *([config.save_predictions] if config.save_predictions is not None else [])], first=out,
                  next_steps=next_steps(config, result)))
    return report


def measured_line(coverage: dict[str, int], has_completed: bool) -> str:
    """The console line on a matrix with unmeasured entries: how much of Z is measured, and that only
    measured entries are revealed and scored (a budgeted run's completed entries never)."""
    n, total = coverage["n_measured"], coverage["n_entries"]
    text = f"measured: {n:,} of {total:,} entries of Z ({n / total:.1%}); only measured entries are revealed and scored"
    if has_completed:
        text += f", the {coverage['n_completed']:,} completed entries (Z_completed) are never used"
    return text


def check_reveal(data: MatrixData, test_rows: list[int], k: int, reveal: str) -> None:
    """Refuse, naming the test tasks and their counts, a --k that leaves a test task nothing to score: a
    distinct reveal takes k of its measured entries and the score needs one more (a budgeted run measures
    only part of each row)."""
    if reveal != "without_replacement":
        return  # the reference reveal takes at most k and is checked after the draw (reference_shortfall)
    n_measured = np.isfinite(data.Z[test_rows]).sum(axis=1)
    short = [(data.row_names[t], int(c)) for t, c in zip(test_rows, n_measured) if c <= k]
    if not short:
        return
    N = data.Z.shape[1]
    named = ", ".join(f"{name!r} ({c} of {N} measured)" for name, c in short[:8])
    named += f", ... ({len(short) - 8} more)" if len(short) > 8 else ""
    fewest = min(c for _, c in short)
    fix = (f"Lower --k to {fewest - 1} or fewer, or leave them out" if fewest > 1 else "Leave them out")
    tasks = f"{len(short)} test task{'s' * (len(short) != 1)}"
    raise ValueError(f"--k {k}: {tasks} with no more than k measured entries: {named}; each needs k revealed plus "
                     f"at least one to score ({k + 1}). {fix} of the test tasks (--split)")


def reference_shortfall(result, row_names: list[str], k: int) -> str | None:
    """With --reveal reference (the same drawn columns for every test task) on a matrix with unmeasured
    entries, test tasks get fewer revealed entries than the distinct columns drawn: what they got, or None."""
    from jaxforget.completion import reference_reveal

    revealed = np.asarray(result.reveal).sum(axis=-1)  # [S, T]
    N = result.reveal.shape[-1]
    drawn = np.array([int(reference_reveal(s, np.ones((1, N), bool), k).sum()) for s in result.seeds])  # [S]
    if (revealed >= drawn[:, None]).all():
        return None
    s, t = np.unravel_index(np.argmin(revealed - drawn[:, None]), revealed.shape)
    return (f"--reveal reference reveals the same drawn columns in every test task, and not all of them are "
            f"measured here: test tasks got {revealed.min()}–{revealed.max()} revealed entries of the "
            f"{drawn.min()}–{drawn.max()} distinct columns drawn (k = {k}); fewest: {revealed[s, t]} of {drawn[s]} "
            f"in {row_names[result.test_rows[t]]!r}, seed {result.seeds[s]}; a task with none is predicted without "
            "any entry of its own")


def next_steps(config: PredictConfig, result) -> list[str]:
    """What to run after the benchmark: on a run, replay with the best method; else a run's own matrix."""
    if config.matrix is None or not (config.matrix / "meta.json").exists():
        return ["python -m jaxforget.predict --matrix runs/default   (a collected run's matrix)"]
    plain = ("additive", "knn", "knn_baseline", "mf", "svd", "soft_impute")  # what replay's offline:<method> takes
    scores = {label: s["rmse"]["mean"] for label, s in result.to_json()["summary"].items()
              if label in plain and "rmse" in s}
    best = min(scores, key=scores.get) if scores else "additive"
    return [f"python -m jaxforget.replay {config.matrix} --strategies none random offline:{best}   "
            f"(replay by {best}, the lowest RMSE here)"]


def _names_text(names: list[str], shown: int = 8) -> str:
    """The first `shown` names, comma-separated, and how many more."""
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


RANGES: dict[str, Range] = {
    # every int/float flag (tests/test_robustness.py checks that none is missing)
    **dict.fromkeys(("split_seed", "seeds", "synthetic_seed"), at_least(0)),
    **dict.fromkeys(("k", "top_n", "batch_size", "synthetic_cols"), at_least(1)),
    "synthetic_rows": at_least(2),  # train rows and test rows
    "threshold": FINITE,
    "memory": above(0),
}


def check_flags(config: PredictConfig) -> None:
    """Every flag checked before anything is read: numeric ranges (NaN / inf refused), then the rest, each
    error naming its flag as typed."""
    if config.k < 1:
        raise ValueError(f"--k {config.k}: at least one entry per test task must be revealed")
    if config.top_n < 1:
        raise ValueError(f"--top-n {config.top_n}: precision@n needs n >= 1")
    if config.threshold is not None and not np.isfinite(config.threshold):
        raise ValueError(f"--threshold {config.threshold}: must be a finite number")
    if not config.seeds:
        raise ValueError("--seeds: give at least one seed")
    check_ranges(config, RANGES)  # every other numeric flag: NaN / inf and its range
    if config.save_predictions is not None and config.save_predictions.suffix != ".npz":
        raise ValueError(f"--save-predictions {config.save_predictions}: the file is an npz archive; name it *.npz")
    for flag, path in (("--out", config.out), ("--save-predictions", config.save_predictions)):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{flag} {path}: is a directory; give the path of the file to write")
        error = out_dir_error(Path(path).parent, flag) if path is not None else None
        if error:
            raise ValueError(error)


def cli(argv: list[str] | None = None) -> dict:
    from jaxforget.cli import run

    return run(PredictConfig, main, argv)  # a damaged run directory (RunError, naming the file) is bad input too


if __name__ == "__main__":
    cli()
