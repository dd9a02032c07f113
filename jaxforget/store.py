"""Reading forgetting matrices from run directories and from other formats.

Formats accepted by :func:`load_matrix`:

* a run directory (``RUN/forgetting.npz``, see docs/architecture.md) or an ``.npz`` file: key ``Z``
  (or the file's only array), optional ``task_names`` and ``example_ids``;
* ``.npy``: a 2-D float array, NaN = not measured;
* ``.csv``: rows of numbers, empty cells or ``nan`` = not measured; an optional header line of
  column ids and an optional first column of row names are detected;
* ``.pkl`` / ``.pickle``: the paper's reference splits, a dict with ``train_mat`` and ``test_mat``
  (arrays or anything ``numpy.asarray`` accepts); rows are train rows followed by test rows, and
  the split is returned with the matrix. Only load pickles you trust (pickle runs code).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class MatrixData:
    """A forgetting matrix with whatever names and split its file carried."""

    Z: np.ndarray  # [M, N] float32, NaN = not measured
    row_names: list[str]
    col_ids: list[str]
    source: str
    test_rows: list[int] | None = None  # set when the file defines a split (reference pickles)


def _names(values, n: int, prefix: str) -> list[str]:
    return [str(v) for v in values] if values is not None else [f"{prefix}{i}" for i in range(n)]


def _checked(Z, path: Path, what: str) -> np.ndarray:
    try:
        Z = np.asarray(Z, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {what} is not a numeric matrix ({e})") from None
    if Z.ndim != 2 or 0 in Z.shape:
        raise ValueError(f"{path}: {what} must be a non-empty 2-D matrix; got shape {Z.shape}")
    return Z


def _load_npz(path: Path) -> MatrixData:
    with np.load(path, allow_pickle=False) as f:
        keys = list(f.keys())
        if "Z" in f:
            key = "Z"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise ValueError(f"{path}: no array named 'Z' and several arrays ({', '.join(keys)}); which is the matrix?")
        Z = _checked(f[key], path, f"array {key!r}")
        rows = f["task_names"].tolist() if "task_names" in f else None
        cols = f["example_ids"].tolist() if "example_ids" in f else None
    for name, values, n in (("task_names", rows, Z.shape[0]), ("example_ids", cols, Z.shape[1])):
        if values is not None and len(values) != n:
            raise ValueError(f"{path}: {name} has {len(values)} entries for a matrix of shape {Z.shape}")
    return MatrixData(Z, _names(rows, Z.shape[0], "task"), _names(cols, Z.shape[1], "ex"), str(path))


def _cell(text: str) -> float:
    text = text.strip()
    return math.nan if text == "" or text.lower() == "nan" else float(text)


def _load_csv(path: Path) -> MatrixData:
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [(i + 1, row) for i, row in enumerate(csv.reader(fh)) if any(c.strip() for c in row)]
    if not lines:
        raise ValueError(f"{path}: empty file")

    def numeric(cells):
        try:
            [_cell(c) for c in cells]
            return True
        except ValueError:
            return False

    header = None
    if not numeric(lines[0][1]) and not numeric(lines[0][1][1:]):
        header, lines = lines[0][1], lines[1:]
    has_names = bool(lines) and not numeric(lines[0][1]) and numeric(lines[0][1][1:])
    row_names, values = [], []
    width = None
    for lineno, cells in lines:
        name, cells = (cells[0], cells[1:]) if has_names else (None, cells)
        if width is None:
            width = len(cells)
        if len(cells) != width:
            raise ValueError(f"{path}, line {lineno}: {len(cells)} values where earlier lines have {width}")
        try:
            values.append([_cell(c) for c in cells])
        except ValueError as e:
            raise ValueError(f"{path}, line {lineno}: not a number ({e})") from None
        if name is not None:
            row_names.append(name)
    Z = _checked(values, path, "the table")
    cols = header[1:] if header is not None and has_names else header
    if cols is not None and len(cols) != Z.shape[1]:
        raise ValueError(f"{path}, line 1: header has {len(cols)} column ids for {Z.shape[1]} columns")
    return MatrixData(Z, _names(row_names or None, Z.shape[0], "task"), _names(cols, Z.shape[1], "ex"), str(path))


def _load_pickle(path: Path) -> MatrixData:
    with open(path, "rb") as fh:
        obj = pickle.load(fh)
    if not isinstance(obj, dict) or not {"train_mat", "test_mat"} <= set(obj):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected a dict with 'train_mat' and 'test_mat' (the reference splits); got {got}")
    train = _checked(obj["train_mat"], path, "train_mat")
    test = _checked(obj["test_mat"], path, "test_mat")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"{path}: train_mat has {train.shape[1]} columns but test_mat has {test.shape[1]}")
    Z = np.concatenate([train, test], axis=0)
    names = [f"train{i}" for i in range(train.shape[0])] + [f"test{i}" for i in range(test.shape[0])]
    return MatrixData(Z, names, _names(None, Z.shape[1], "ex"), str(path),
                      test_rows=list(range(train.shape[0], Z.shape[0])))


def load_matrix(path: str | Path) -> MatrixData:
    """Load a forgetting matrix from a run directory, ``.npy``, ``.npz``, ``.csv`` or reference pickle."""
    path = Path(path)
    if path.is_dir():
        npz = path / "forgetting.npz"
        if not npz.exists():
            raise FileNotFoundError(f"{path} is a directory without forgetting.npz; is it a finished jaxforget run?")
        return _load_npz(npz)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        Z = _checked(np.load(path, allow_pickle=False), path, "the array")
        return MatrixData(Z, _names(None, Z.shape[0], "task"), _names(None, Z.shape[1], "ex"), str(path))
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".csv":
        return _load_csv(path)
    if suffix in (".pkl", ".pickle"):
        return _load_pickle(path)
    raise ValueError(f"{path}: unknown matrix format {suffix!r}; expected a run directory, .npy, .npz, .csv or .pkl")
