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
import io
import json
import logging
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxforget.locks import FileLock, holder_text


log = logging.getLogger("jaxforget.store")

@dataclasses.dataclass
class MatrixData:
    """A forgetting matrix with whatever names and split its file carried."""

    Z: np.ndarray  # [M, N] float32, NaN = not measured
    row_names: list[str]
    col_ids: list[str]
    source: str
    test_rows: list[int] | None = None  # set when the file defines a split (reference pickles)
    # A budgeted run (collect --eval.budget, docs/collect.md) also holds these; Z's NaN stay the truth of
    # "not measured", and Z_completed is a model's output, never to be fitted or scored as a measurement.
    Z_completed: np.ndarray | None = None  # [M, N] float32: Z where measured, the completion elsewhere
    measured: np.ndarray | None = None  # [M, N] bool, as the file saved it

    def coverage(self) -> dict[str, int]:
        """Entry counts of Z: ``n_entries``, ``n_measured`` (finite Z), ``n_completed`` (entries that only
        Z_completed fills: finite there, NaN in Z) and ``n_disagree`` (entries where the saved
        ``measured`` mask says otherwise than Z's NaN; 0 without a mask)."""
        finite = np.isfinite(self.Z)
        completed = 0 if self.Z_completed is None else int((np.isfinite(self.Z_completed) & ~finite).sum())
        disagree = 0 if self.measured is None else int((self.measured != finite).sum())
        return dict(n_entries=int(finite.size), n_measured=int(finite.sum()), n_completed=completed,
                    n_disagree=disagree)


def _names(values, n: int, prefix: str) -> list[str]:
    return [str(v) for v in values] if values is not None else [f"{prefix}{i}" for i in range(n)]


MAX_ABS_VALUE = 1e15
"""Largest |Z| a loaded matrix may hold: squared errors of larger values overflow float32."""


def _checked(Z, path: Path, what: str) -> np.ndarray:
    try:
        Z = np.asarray(Z, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {what} is not a numeric matrix ({e})") from None
    if Z.ndim != 2 or 0 in Z.shape:
        raise ValueError(f"{path}: {what} must be a non-empty 2-D matrix; got shape {Z.shape}")
    n_inf = int(np.isinf(Z).sum())
    if n_inf:
        log.warning("%s: %d infinite cells of %s are treated as not measured (NaN)", path, n_inf, what)
        Z = np.where(np.isinf(Z), np.nan, Z)
    big = float(np.nanmax(np.abs(Z))) if np.isfinite(Z).any() else 0.0
    if big > MAX_ABS_VALUE:
        raise ValueError(f"{path}: {what} has values up to {big:.3g}; beyond {MAX_ABS_VALUE:g} their squares overflow "
                         "the float32 fits and metrics (RMSE would be inf or NaN): rescale the matrix")
    return Z


def _unreadable(path: Path, what: str, e: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {e}); is the file complete and of that "
                      "format?")


def _load_npz(path: Path) -> MatrixData:
    try:
        _check_zip_header(path)
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "Z" in f:
                key = "Z"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise ValueError(f"{path}: no array named 'Z' and several arrays ({', '.join(keys)}); "
                                 "which is the matrix?")
            Z = _checked(f[key], path, f"array {key!r}")
            rows = f["task_names"].tolist() if "task_names" in f else None
            cols = f["example_ids"].tolist() if "example_ids" in f else None
            completed = measured = None
            if key == "Z" and "Z_completed" in f:  # a budgeted run's completion of Z
                completed = _checked(f["Z_completed"], path, "array 'Z_completed'")
            if key == "Z" and "measured" in f:
                measured = _mask(f["measured"], path, "measured")
    except ValueError as e:
        if str(e).startswith(str(path)):  # ours, already naming the file
            raise
        raise _unreadable(path, ".npz archive", e) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:  # not a zip, truncated, a damaged member
        raise _unreadable(path, ".npz archive", e) from None
    for name, values, n in (("task_names", rows, Z.shape[0]), ("example_ids", cols, Z.shape[1])):
        if values is not None and len(values) != n:
            raise ValueError(f"{path}: {name} has {len(values)} entries for a matrix of shape {Z.shape}")
    for name, array in (("Z_completed", completed), ("measured", measured)):
        if array is not None and array.shape != Z.shape:
            raise ValueError(f"{path}: {name} has shape {array.shape} but Z has shape {Z.shape}; both come from "
                             "one budgeted run (collect --eval.budget): reassemble the run")
    return MatrixData(Z, _names(rows, Z.shape[0], "task"), _names(cols, Z.shape[1], "ex"), str(path),
                      Z_completed=completed, measured=measured)


def _mask(values: np.ndarray, path: Path, key: str) -> np.ndarray:
    """A saved boolean mask (bool, or 0/1 numbers) as bool."""
    values = np.asarray(values)
    if values.dtype != bool and not (np.issubdtype(values.dtype, np.number) and np.isin(values, (0, 1)).all()):
        raise ValueError(f"{path}: array {key!r} must be a boolean mask (or 0/1); got {values.dtype} values")
    return values.astype(bool)


def _cell(text: str) -> float:
    text = text.strip()
    return math.nan if text == "" or text.lower() == "nan" else float(text)


def _load_csv(path: Path) -> MatrixData:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is dropped
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                         "save the table as UTF-8 CSV") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    lines = [(i + 1, row) for i, row in enumerate(rows) if any(c.strip() for c in row)]
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
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError) as e:  # what unpickling damaged bytes raises (a class of a missing module too)
        raise _unreadable(path, "pickle", e) from None
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
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy file (it does not start with the NumPy header); save the matrix "
                             "with numpy.save, or use .csv / .npz")
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as e:
            if "pickle" in str(e):  # a real .npy holding Python objects
                raise ValueError(f"{path}: holds Python objects (dtype object), not numbers; save a float "
                                 "array") from None
            raise _unreadable(path, ".npy file", e) from None
        except (OSError, EOFError) as e:
            raise _unreadable(path, ".npy file", e) from None
        Z = _checked(array, path, "the array")
        return MatrixData(Z, _names(None, Z.shape[0], "task"), _names(None, Z.shape[1], "ex"), str(path))
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".csv":
        return _load_csv(path)
    if suffix in (".pkl", ".pickle"):
        return _load_pickle(path)
    raise ValueError(f"{path}: unknown matrix format {suffix!r}; expected a run directory, .npy, .npz, .csv or .pkl")


# ------------------------------------------------------------------------------------------------
# The run directory written by `python -m jaxforget.collect` (layout in docs/architecture.md).

SCHEMA_VERSION = 1


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (corrupt file, other config, incomplete rows)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def atomic_write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, default=str) + "\n" for r in records).encode())


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1] or 'value'}: {a!r} != {b!r}"]


def output_settings(config: Any, *, leave_out: tuple[str, ...] = ("out", "force", "quiet")) -> dict[str, Any]:
    """The fields of a command's config dataclass that shape its output, as JSON values (Paths as strings,
    tuples as lists): what :func:`check_output` compares."""
    import dataclasses

    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in leave_out}
    return json.loads(json.dumps(values, default=str))


def check_output(record: Path, settings: dict[str, Any], *, force: bool, key: str = "flags") -> None:
    """The one rule on a command's outputs, checked before any work: an output records the settings that
    made it (``record``, a JSON file, under `key`); the same settings again replace it (the same question
    gets the same place), other settings are refused, naming them, unless ``force``. Default output paths
    keep the variants a user compares apart (forecast's offline / online / measured, predict's method
    sets), so a refusal means the same place was asked for a different answer. (collect and replay apply
    the rule through :meth:`RunDir.start`, and resume instead of replacing.)"""
    if force or not record.exists():
        return
    try:
        recorded = read_json_object(record, "a jaxforget output record").get(key)
    except (OSError, ValueError):
        recorded = None  # damaged or foreign: not ours to replace without --force
    if recorded == settings:
        return
    diffs = (["it is not a jaxforget output record"] if not isinstance(recorded, dict) else
             [f"--{d.replace('_', '-')}" for d in _diff(recorded, settings)])
    shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
    raise RunError(f"{record}: holds the output of other settings ({shown}; recorded != now); add --force to replace "
                   "it, or choose another --out")


def read_npz(path: Path, required: tuple[str, ...] = (), *, hint: str = "delete it to recompute"
             ) -> dict[str, np.ndarray]:
    """Every array of an .npz file the run directory wrote, with the `required` keys present; a missing,
    damaged or incomplete file is one RunError line naming it (`hint` says what to do)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing; {hint}")
    try:
        _check_zip_header(path)
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile/ValueError/OSError/EOFError: any of them means the file is damaged
        raise RunError(f"{path}: corrupted or unreadable ({type(e).__name__}: {_one_line(e)}); {hint}") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise RunError(f"{path}: has no {', '.join(missing)} (keys: {sorted(arrays) or 'none'}); {hint}")
    return arrays


def _check_zip_header(path: Path) -> None:
    """An .npz is a zip archive: anything else (empty, text, a bare .npy) is refused before numpy, which would
    call it "pickled data"."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError("empty file" if not head else f"not a zip archive (it starts with {head!r})")


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def read_json_object(path: Path, what: str = "JSON file") -> dict[str, Any]:
    """A JSON file that must hold an object: missing, unreadable, not UTF-8, not JSON or not an object is one
    ValueError line naming the file (`what` says what it should be, e.g. "a Hugging Face config.json")."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found ({what})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected {what}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); expected {what}") from None
    except OSError as e:
        raise ValueError(f"{path}: unreadable ({e.strerror or e}); expected {what}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__} ({what})")
    return value


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class RunDir:
    """``RUN/``: ``meta.json``, ``upstream.jsonl``, ``tasks.jsonl``, ``base.npz``, ``rows/``,
    ``forgetting.npz``, ``tb/``, ``checkpoints/``.

    Each finished task is one file ``rows/task_<index>.npz`` written atomically, so any number of
    processes (``--shard i/n``) can fill one run directory and a killed run loses at most the task in
    progress. ``forgetting.npz`` is assembled from the rows once all are present.

    ``locks/`` holds the ``flock`` files (:mod:`jaxforget.locks`) that keep processes apart:
    ``run.lock`` (one process alone, or any number of shard jobs: :meth:`lock_run`), ``files.lock``
    (the files every job may write: meta.json, base.npz, the assembly: :meth:`files_lock`) and
    ``task_<index>.lock`` (the task a process is training: :meth:`lock_task`).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    meta_path = property(lambda self: self.root / "meta.json")
    base_path = property(lambda self: self.root / "base.npz")
    forgetting_path = property(lambda self: self.root / "forgetting.npz")
    rows_dir = property(lambda self: self.root / "rows")
    tb_dir = property(lambda self: self.root / "tb")
    checkpoints_dir = property(lambda self: self.root / "checkpoints")
    locks_dir = property(lambda self: self.root / "locks")

    def row_path(self, index: int) -> Path:
        return self.rows_dir / f"task_{index:05d}.npz"

    def lock_run(self, *, shard: bool = False) -> FileLock:
        """The run lock, taken without waiting (creating the directory): exclusive for a process that
        does the whole run, shared by ``--shard`` jobs (which then lock each task, :meth:`lock_task`).
        A RunError naming the holder when it conflicts. Release it (``.release()``) when done; a
        killed process releases it with its death."""
        lock = FileLock(self.locks_dir / "run.lock", shared=shard)
        try:
            ok = lock.acquire()
        except OSError as e:
            raise RunError(f"{self.root}: cannot create the run directory's lock file ({e.strerror})") from None
        if not ok:
            holder = holder_text(lock.path)
            if shard:
                raise RunError(f"{self.root}: a collect process without --shard is working on this run directory "
                               f"({holder}); shard jobs can only share a directory with other shard jobs. Wait for "
                               "it to finish or stop it.")
            raise RunError(f"{self.root}: another collect process is working on this run directory ({holder}). "
                           "Wait for it to finish or stop it, or choose another --out; jobs that share one run "
                           "directory must each take a --shard i/n.")
        return lock

    def files_lock(self) -> FileLock:
        """Exclusive lock (``with run.files_lock():`` waits for it) around the files every job of a run may
        write: meta.json, base.npz, upstream.jsonl, tasks.jsonl, forgetting.npz."""
        return FileLock(self.locks_dir / "files.lock")

    def lock_task(self, index: int) -> FileLock | None:
        """The lock of task `index`, taken without waiting, or None when another process holds it (it is
        training that task). Check that the task has no row yet after taking it: its lock file is removed
        once the row is written (``release(unlink=True)``)."""
        lock = FileLock(self.locks_dir / f"task_{index:05d}.lock")
        return lock if lock.acquire() else None

    def start(self, meta: dict[str, Any], *, compare: str = "config", ignore: tuple[str, ...] = (),
              normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> bool:
        """Create the run (writing ``meta.json``) or check that an existing one has the same
        ``meta[compare]`` (its keys `ignore` aside; the recorded one passed through `normalize` first, e.g.
        to give fields a run of an older version did not have their defaults). Returns True when resuming.
        Raises :class:`RunError` listing the differing fields otherwise."""
        with self.files_lock():  # two jobs starting at once: one creates, the other checks
            if self.meta_path.exists():
                old = self.read_meta()
                if not isinstance(old.get(compare), dict):
                    raise RunError(f"{self.meta_path}: has no {compare!r} record, so it is not the meta.json of a "
                                   "jaxforget run (damaged, or written by something else). Restore it, or move the "
                                   "directory away / choose another --out to start afresh.")
                recorded = normalize(old[compare]) if normalize is not None else old[compare]
                diffs = _diff({k: v for k, v in recorded.items() if k not in ignore},
                              {k: v for k, v in meta.get(compare, {}).items() if k not in ignore})
                if diffs:
                    raise RunError(
                        f"{self.meta_path}: this run directory holds a run with another configuration "
                        f"({'; '.join(diffs[:8])}). Resume with the same flags or choose another --out."
                    )
                return True
            atomic_write_json(self.meta_path, {"schema_version": SCHEMA_VERSION, **meta})
            return False

    def read_meta(self) -> dict[str, Any]:
        """meta.json as a dict; any damage (missing, empty, not JSON, not an object) is one RunError line."""
        try:
            return read_json_object(self.meta_path, "the meta.json of a jaxforget run")
        except (OSError, ValueError) as e:
            raise RunError(str(e)) from None

    def read_run_meta(self) -> dict[str, Any]:
        """The meta.json of a collect run, checked: ``config`` (an object with a ``data`` and an ``eval``
        object), ``task_names`` and ``example_ids`` (lists of strings). A field missing or mistyped is one
        RunError line naming the file and the field, never a KeyError later."""
        if not self.meta_path.exists():
            raise FileNotFoundError(f"{self.root}: not a run directory (no meta.json); "
                                    f"python -m jaxforget.collect --out {self.root} writes one")
        meta = self.read_meta()
        config = meta.get("config")
        problems = []
        if not isinstance(config, dict):
            problems.append("config (an object)")
        else:
            problems += [f"config.{k} (an object)" for k in ("data", "eval") if not isinstance(config.get(k, {}), dict)]
        problems += [f"{k} (a list of strings)" for k in ("task_names", "example_ids") if not _string_list(meta.get(k))]
        if problems:
            raise RunError(f"{self.meta_path}: no valid {', '.join(problems)}, so it is not the meta.json of a "
                           "collect run (damaged, or written by something else); restore it from the run's copy")
        return meta

    def read_forgetting(self) -> dict[str, np.ndarray]:
        """forgetting.npz of a finished run: ``Z`` a 2-D float matrix with ``task_names`` / ``example_ids``
        of its shape. Missing (the run is not assembled) or damaged is one RunError line naming it."""
        if not self.forgetting_path.exists():
            raise RunError(f"{self.forgetting_path}: the run is not complete (finish it, or merge its shards with "
                           f"python -m jaxforget.collect --merge {self.root})")
        hint = f"reassemble it with python -m jaxforget.collect --merge {self.root}"
        f = read_npz(self.forgetting_path, ("Z", "task_names", "example_ids"), hint=hint)
        Z = f["Z"]
        if Z.ndim != 2 or not np.issubdtype(Z.dtype, np.floating):
            raise RunError(f"{self.forgetting_path}: Z is {Z.dtype} of shape {Z.shape}, not a float matrix; {hint}")
        if f["task_names"].shape != Z.shape[:1] or f["example_ids"].shape != Z.shape[1:]:
            raise RunError(f"{self.forgetting_path}: task_names {f['task_names'].shape} / example_ids "
                           f"{f['example_ids'].shape} do not match Z {Z.shape}; {hint}")
        return f

    def update_meta(self, **fields: Any) -> None:
        with self.files_lock():  # read-modify-write: jobs of one run must not lose each other's fields
            atomic_write_json(self.meta_path, {**self.read_meta(), **fields})

    def write_base(self, nll_before: np.ndarray, **extra: np.ndarray) -> bool:
        """Write base.npz unless another job of the run wrote it first (then its values stand, so every
        row of Z is measured against one base); returns whether this call wrote it."""
        with self.files_lock():
            if self.base_path.exists():
                return False
            atomic_write_npz(self.base_path, nll_before=np.asarray(nll_before, np.float32), **extra)
            return True

    def read_base(self) -> dict[str, np.ndarray] | None:
        """base.npz (with ``nll_before``, a vector) or None when it was not written yet."""
        if not self.base_path.exists():
            return None
        base = read_npz(self.base_path, ("nll_before",))
        if base["nll_before"].ndim != 1:
            raise RunError(f"{self.base_path}: nll_before has shape {base['nll_before'].shape}, not a vector; "
                           "delete it to recompute")
        return base

    @staticmethod
    def row_arrays(*, name: str, nll_after: np.ndarray, status: str = "ok", reason: str = "",
                   **extra: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of one task's row file (what :meth:`write_row` writes and :meth:`read_row` returns)."""
        if status not in ("ok", "failed"):
            raise ValueError(f"row status must be 'ok' or 'failed'; got {status!r}")
        return dict(name=np.asarray(name), nll_after=np.asarray(nll_after, np.float32), status=np.asarray(status),
                    reason=np.asarray(reason), **{k: np.asarray(v) for k, v in extra.items()})

    def write_row(self, index: int, *, name: str, nll_after: np.ndarray, status: str = "ok", reason: str = "",
                  **extra: np.ndarray) -> None:
        """One task's result: ``nll_after [N]`` (NaN when failed), status ``ok``/``failed`` and reason."""
        atomic_write_npz(self.row_path(index), **self.row_arrays(name=name, nll_after=nll_after, status=status,
                                                                 reason=reason, **extra))

    def read_row(self, index: int) -> dict[str, Any]:
        return read_npz(self.row_path(index), ("name", "nll_after", "status"))

    def finished(self) -> list[int]:
        """Indices of tasks with a row file (ok or failed), without reading them."""
        if not self.rows_dir.exists():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in self.rows_dir.glob("task_*.npz"))

    def assemble(self, task_names: list[str], example_ids: list[str], *, em_base_correct_only: bool = True,
                 rows: dict[int, dict[str, np.ndarray]] | None = None, write: bool = True) -> dict[str, np.ndarray]:
        """Build ``forgetting.npz`` from ``base.npz`` and every row; RunError naming what is missing. `rows`:
        rows not (yet) on disk, by index; ``write=False`` returns the assembly without writing it.

        With exact match (``em_before`` in base.npz, ``em_after`` in the rows) it also holds
        ``em_before [N_em]``, ``em_after [M, N_em]`` (NaN rows for failed tasks) and
        ``Z_em = em_before & ~em_after`` as 0/1 floats, NaN on failed rows and, with
        ``em_base_correct_only``, on the examples the base model got wrong.
        """
        base = self.read_base()
        if base is None:
            raise RunError(f"{self.base_path}: missing; the base model's NLL was never written")
        M, N = len(task_names), len(example_ids)
        given = rows or {}
        missing = sorted(set(range(M)) - set(self.finished()) - set(given))
        if missing:
            shown = ", ".join(self.row_path(i).name for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise RunError(f"{self.rows_dir}: {len(missing)} of {M} task rows missing ({shown})")
        rows = [given[i] if i in given else self.read_row(i) for i in range(M)]
        for i, row in enumerate(rows):
            if str(row["name"]) != task_names[i]:
                raise RunError(f"{self.row_path(i)}: holds task {str(row['name'])!r}, expected {task_names[i]!r}")
            if row["nll_after"].shape[-1] != N:
                raise RunError(f"{self.row_path(i)}: {row['nll_after'].shape[-1]} examples, expected {N}")
        nll_before = base["nll_before"]
        nll_after = np.stack([r["nll_after"] for r in rows])
        out = dict(Z=nll_after - nll_before[None], nll_before=nll_before, nll_after=nll_after,
                   task_names=np.asarray(task_names), example_ids=np.asarray(example_ids),
                   failed=np.asarray([str(r["status"]) == "failed" for r in rows]))
        if any("measured" in r for r in rows):  # --eval.budget: which entries were measured (none on a failed row)
            out.update({k: np.stack([r[k] if k in r else np.zeros(N, bool) for r in rows]).astype(bool)
                        for k in ("measured", "holdout")})
        if all("nll_steps" in r for r in rows) and rows:
            # Tasks capped by epochs stop (and are measured) earlier: align rows on the union of the
            # evaluated steps, NaN where a task was not measured at that step.
            steps = np.unique(np.concatenate([r["steps"] for r in rows]))
            Z_steps = np.full((M, steps.size, N), np.nan, np.float32)
            for i, r in enumerate(rows):
                Z_steps[i, np.searchsorted(steps, r["steps"])] = r["nll_steps"] - nll_before[None]
            out.update(Z_steps=Z_steps, steps=steps)
        if "em_before" in base:
            em_before = base["em_before"].astype(bool)
            em_after = np.full((M, em_before.size), np.nan, np.float32)
            for i, r in enumerate(rows):
                if "em_after" in r:
                    em_after[i] = r["em_after"]
            Z_em = np.where(np.isnan(em_after), np.nan, (em_before[None] & (em_after == 0)).astype(np.float32))
            if em_base_correct_only:
                Z_em[:, ~em_before] = np.nan
            out.update(em_before=em_before, em_after=em_after, Z_em=Z_em)
        if write:
            atomic_write_npz(self.forgetting_path, **out)
        return out
