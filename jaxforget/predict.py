"""``python -m jaxforget.predict``: benchmark forgetting prediction by matrix completion.

Runs the paper's protocol (train tasks fully measured; k revealed entries per test task; the rest
predicted) for several methods on one matrix and prints a table of method x metric, mean ± std over
seeds; the same numbers, per seed, go to a JSON file.

    python -m jaxforget.predict                                  # planted synthetic matrix
    python -m jaxforget.predict --matrix runs/default            # a collected run
    python -m jaxforget.predict --matrix Z.npy --split 0.25 --methods additive knn_baseline mf:rank=10
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Literal

import numpy as np

from jaxforget.store import MatrixData, atomic_write_json, load_matrix


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
    """Methods, each NAME or NAME:option=value,...; names: additive, knn, knn_baseline, mf, soft_impute,
    logistic_mf, logistic_additive."""
    k: int = 30
    """Revealed entries per test task."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One reveal draw (and initialisation) per seed; the table reports mean ± std over them."""
    reveal: Literal["without_replacement", "reference"] = "without_replacement"
    """without_replacement: k distinct entries per test row. reference: the paper's code (one draw of k column
    indices with replacement, shared by all test rows)."""
    mode: Literal["refit", "fold_in"] = "refit"
    """refit: fit train rows + revealed entries per test task. fold_in: fit train rows once, fold each test row in."""
    binary: bool | None = None
    """Treat the matrix as 0/1 exact-match drop. Default: detected (all observed entries are 0 or 1)."""
    threshold: float | None = None
    """Forgotten means Z > threshold for F1/precision/recall/AUC (default 0; 0.5 for binary)."""
    top_n: int = 100
    """n of precision@n (top-n predicted vs top-n true hidden entries of each test task)."""
    clip: bool = False
    """Clip predictions to the range of the train entries (as scikit-surprise clips to its rating scale)."""
    batch_size: int | None = None
    """Solve at most this many (seed, task) problems at once (bounds memory); default: all together."""
    out: Path | None = None
    """JSON output. Default: RUN/predict.json for a run directory, predict_<name>.json beside a file, or
    ./predict_synthetic.json."""
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
        return split_rows(M, frac, seed)[1]
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
    if config.matrix is None:
        return Path("predict_synthetic.json")
    if config.matrix.is_dir():
        return config.matrix / "predict.json"
    return config.matrix.with_name(f"predict_{config.matrix.stem}.json")


def main(config: PredictConfig) -> dict:
    import jax

    from jaxforget import completion

    methods = [completion.Method.parse(m) for m in config.methods]  # bad names fail before any work
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
    n_nan = int(np.sum(~np.isfinite(data.Z)))
    print(f"matrix {data.source}: {data.Z.shape[0]} tasks x {data.Z.shape[1]} examples, {n_nan} not measured; "
          f"{len(test_rows)} test tasks, k={config.k}, seeds={list(config.seeds)}, "
          f"{'binary' if binary else 'real-valued'}", flush=True)
    result = completion.evaluate(
        data.Z, test_rows=test_rows, methods=methods, k=config.k, seeds=config.seeds, reveal=config.reveal,
        mode=config.mode, binary=binary, threshold=config.threshold, top_n=config.top_n, clip=config.clip,
        batch_size=config.batch_size,
    )
    print(result.table())
    report = dict(
        matrix=data.source, shape=list(data.Z.shape), not_measured=n_nan,
        test_tasks=[data.row_names[i] for i in test_rows],
        config={f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
        versions=dict(python=platform.python_version(), jax=jax.__version__, numpy=np.__version__,
                      backend=jax.default_backend()),
        **result.to_json(),
    )
    out = config.out or _default_out(config)
    atomic_write_json(out, report)
    print(f"wrote {out}")
    return report


def cli(argv: list[str] | None = None) -> dict:
    from jaxforget.cli import run

    return run(PredictConfig, main, argv)


if __name__ == "__main__":
    cli()
