"""Record files in the corpora's native formats, streamed as (where, record) pairs.

    .jsonl, .jsonl.gz, .jsonl.zst one JSON object per line (decompressed as streamed; where = `file:line`)
    .json, .json.gz, .json.zst    one JSON object per line, or one JSON array of objects (FLAN's
                                  `{task}_train.json`; told apart by the first character; where =
                                  `file:item k`, 1-based). Dolma's `.json.gz` shards are JSON lines.
    .parquet                      pyarrow, read in record batches (where = `file:row k`, 1-based)
    a `datasets.save_to_disk` directory
                                  `state.json` + Arrow stream files (a Dataset), or `dataset_dict.json`
                                  + one such directory per split (read in the listed order); pyarrow
                                  reads them without HF datasets (where = `file:row k`)

`.zst` (the Pile's shards) needs `zstandard`, imported only when such a file is read.
pyarrow is the one columnar library here: HF `datasets` is itself built on it (its save_to_disk files
are Arrow streams), it reads Parquet and Arrow in bounded-memory batches, and it is imported only when
a Parquet or Arrow file is read. Nothing is held beyond one batch: a corpus of millions of records is
read in constant memory (see `readers.sample_upstream_files`).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from jaxforget.store import read_json_object

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
RECORD_SUFFIXES = JSONL_SUFFIXES + (".parquet",)
_SUFFIXES = tuple(sorted(RECORD_SUFFIXES + (".txt",), key=len, reverse=True))  # compound ones first
_BATCH = 1024
log = logging.getLogger("jaxforget.data")


def suffix(path: Path) -> str | None:
    """The record-file suffix of `path` (compound ones first), or None."""
    name = path.name
    for s in _SUFFIXES:
        if name.endswith(s):
            return s
    return None


def stem(path: Path) -> str:
    """`path`'s name without its record suffix (`dolma-0001.json.gz` -> `dolma-0001`)."""
    s = suffix(path)
    return path.name[: -len(s)] if s else path.name


def is_dataset_dir(path: Path) -> bool:
    """A `datasets.save_to_disk` directory (Dataset or DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def find_record_files(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """`path` itself (a file or a save_to_disk directory), or the record files and save_to_disk
    directories under a directory (sorted, recursive)."""
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_file() or is_dataset_dir(path):
        return [path]
    found = sorted(p for p in path.rglob("*") if (p.is_file() and suffix(p) in suffixes) or is_dataset_dir(p))
    datasets = [p for p in found if p.is_dir()]
    out = [p for p in found if not any(d in p.parents for d in datasets)]  # a dataset's own files are its
    if not out:
        raise ValueError(f"{path}: directory has no {' or '.join(suffixes)} files and no save_to_disk directories")
    return out


class _ZstdReader(io.RawIOBase):
    """A .zst file decompressed as it is read, frame after frame (zstd's CLI and the Pile's shards may hold
    several). Unlike zstandard's stream_reader, a file that ends inside a frame (a cut download) is an
    error, not a silently shorter corpus."""

    def __init__(self, path: Path, zstandard):
        self._file, self._zstd = open(path, "rb"), zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._obj, self._pending, self._buf = self._dctx.decompressobj(), False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            chunk = self._file.read(1 << 16)
            if not chunk:
                if self._pending:
                    raise self._zstd.ZstdError("the file ends inside a frame")
                return 0
            out = []
            while chunk:
                out.append(self._obj.decompress(chunk))
                self._pending = not self._obj.eof
                chunk = b""
                if self._obj.eof:  # the next frame starts in what this one left over
                    chunk, self._obj = self._obj.unused_data, self._dctx.decompressobj()
            self._buf = b"".join(out)
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _zstd_open(path: Path):
    try:
        import zstandard
    except ImportError:
        raise ImportError(f"{path}: reading .zst files needs zstandard: pip install zstandard") from None
    return io.BufferedReader(_ZstdReader(path, zstandard), buffer_size=1 << 16)


def open_binary(path: Path):
    """`path` opened for reading bytes, decompressed when it ends in .gz or .zst."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        return _zstd_open(path)
    return open(path, "rb")


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return errors + (zstandard.ZstdError,)


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without the newline) of a text file, decompressed when it ends in
    .gz or .zst. Non-UTF-8 bytes and a truncated or corrupt archive name the file and line. A UTF-8
    byte-order mark opening the file (Windows and spreadsheet exports write one) is dropped."""
    lineno = 0
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start}: "
                                     f"{raw[e.start:e.start + 1]!r})") from None
                yield lineno, line.rstrip("\r\n")
    except _corrupt_errors() as e:
        kind = "zstd" if path.name.endswith(".zst") else "gzip"
        raise ValueError(f"{path}:{lineno + 1}: truncated or corrupt {kind} file after line {lineno} ({e}); "
                         "re-download or re-compress it") from None


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("reading Parquet or save_to_disk (Arrow) files needs pyarrow: pip install pyarrow") from None
    return pyarrow


def _check_columns(where: str, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{where}: no column {missing[0]!r} (the field mapping needs {list(required)}; "
                         f"the file has {list(names)})")


def _rows(where: str, batches, required: Sequence[str], names: Sequence[str], first_row: int = 0
          ) -> Iterator[tuple[str, dict]]:
    _check_columns(where, names, required)
    row = first_row
    for batch in batches:
        for rec in batch.to_pylist():
            row += 1
            yield f"{where}:row {row}", rec


def iter_records(path: Path, *, required_columns: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of every record of one file or save_to_disk directory, in order.

    `required_columns`: top-level fields a columnar file must have (checked from its schema before any
    row is read, so a Parquet file without the column fails at once, naming it). JSON lines are checked
    per record by the caller."""
    path = Path(path)
    if is_dataset_dir(path):
        yield from _iter_dataset_dir(path, required_columns)
        return
    s = suffix(path)
    if s == ".parquet":
        pa = _pyarrow()
        try:
            f = pa.parquet.ParquetFile(path)
            names = f.schema_arrow.names
        except (OSError, pa.ArrowException) as e:  # not Parquet, truncated, an unreadable footer
            raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {' '.join(str(e).split())})"
                             ) from None
        batches = f.iter_batches(batch_size=_BATCH)
        try:
            yield from _rows(str(path), batches, required_columns, names)
        except (OSError, pa.ArrowException) as e:  # a damaged row group, found while reading
            if isinstance(e, ValueError) and str(e).startswith(str(path)):
                raise
            raise ValueError(f"{path}: a damaged row group ({type(e).__name__}: {' '.join(str(e).split())})"
                             ) from None
        return
    if s not in JSONL_SUFFIXES:
        raise ValueError(f"{path}: unknown record format (expected one of {RECORD_SUFFIXES} or a save_to_disk "
                         "directory)")
    if s in (".json", ".json.gz", ".json.zst") and _starts_array(path):
        for k, obj in iter_json_array(path):
            yield f"{path}:item {k}", obj
        return
    for lineno, obj in iter_json_lines(path):
        yield f"{path}:{lineno}", obj


def _starts_array(path: Path) -> bool:
    """Whether the file's first non-blank character (after a byte-order mark) opens a JSON array."""
    with open_binary(path) as f:
        try:
            head = f.read(4096)
            while head and not head.lstrip(b"\xef\xbb\xbf \t\r\n"):  # all blank so far
                more = f.read(4096)
                if not more:
                    break
                head = more
        except _corrupt_errors() as e:
            raise ValueError(f"{path}: truncated or corrupt compressed file ({e}); re-download it") from None
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def iter_json_array(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based item number, object) of a file holding one JSON array of objects (FLAN's task files).

    The file is decoded whole (FLAN's largest task file is tens of MB); an error names the line and
    column, or the item that is not an object."""
    try:
        with open_binary(path) as f:
            raw = f.read()
    except _corrupt_errors() as e:
        raise ValueError(f"{path}: truncated or corrupt compressed file ({e}); re-download it") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON array of objects, got {type(items).__name__}")
    for k, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:item {k}: expected a JSON object, got {type(obj).__name__}")
        yield k, obj


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    blank = 0
    for lineno, line in iter_lines(path):
        if not line.strip():
            blank += 1
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj
    if blank:
        log.info("%s: skipped %d blank line(s)", path, blank)


def _iter_dataset_dir(path: Path, required: Sequence[str], rows: list[int] | None = None
                      ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows are numbered across the data files (and splits) of the dataset, so `dir:row k` is unique."""
    rows = [0] if rows is None else rows
    if (path / "dataset_dict.json").is_file():
        splits = read_json_object(path / "dataset_dict.json", "a datasets DatasetDict index").get("splits")
        if not isinstance(splits, list):
            raise ValueError(f"{path / 'dataset_dict.json'}: no list of splits")
        for split in splits:
            yield from _iter_dataset_dir(path / split, required, rows)
        return
    pa = _pyarrow()
    state = read_json_object(path / "state.json", "a datasets save_to_disk state")
    entries = state.get("_data_files", [])
    if not isinstance(entries, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str)
                                                for f in entries):
        raise ValueError(f"{path}/state.json: _data_files must be a list of {{\"filename\": ...}} objects")
    files = [path / f["filename"] for f in entries]
    if not files:
        raise ValueError(f"{path}/state.json: lists no data files (_data_files)")
    for file in files:
        if not file.is_file():
            raise ValueError(f"{path}/state.json: data file {file.name} does not exist")
        with pa.memory_map(str(file)) as source:
            reader = pa.ipc.open_stream(source)
            for where, rec in _rows(str(file), reader, required, reader.schema.names, rows[0]):
                rows[0] += 1
                yield where, rec
