"""Readers for upstream corpora and task data, with errors that name the file and record.

Files (`jaxforget.data.formats`): `.jsonl`, `.jsonl.gz` / `.json.gz`, `.parquet`, `datasets.save_to_disk`
directories, and (upstream only) `.txt`; a path is one of them or a directory of them (sorted,
recursive). Which field holds what is a `FieldMap` (`jaxforget.data.fields`): a named preset (upstream
auto / dolma / pile; tasks auto / flan / dolly / tulu) plus `role=field` overrides.

Upstream corpus (`read_upstream`, `iter_upstream`, `sample_upstream_files`), preset 'auto':
  - records with `text` (str); optional `id` (str or int; default `<file stem>:<line or row>`) and
    `source` or `domain` (default: the file stem).
  - `*.txt`: plain text; each block of non-blank lines is one example, id `<file stem>:<first line>`,
    source the file stem.
  Ids must be unique; they are the column names of the forgetting matrix, so rows measured by
  different jobs line up. `sample_upstream` (a list) and `sample_upstream_files` (a corpus streamed
  twice: counts per source, then the selected records; constant memory in the corpus size) select the
  same N examples for the same seed, optionally stratified by source.

Tasks (`read_tasks`): a directory of record files (one task per file, named by its path without the
suffix) or one file whose records carry a task field. Preset 'auto' records are one of
  - {"prompt": str, "completion": str}
  - {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]} (Tulu/Dolly chat
    data; at least one assistant message, whose content is the loss target)
  - {"text": str} (language modelling on the whole text)
Other fields are ignored. `split_task` makes a seeded per-task train/validation split.

Blank lines are skipped and a UTF-8 byte-order mark opening a file is accepted; every other bad record
is a `ValueError` naming `file:line` (`file:row k` in Parquet / Arrow): malformed JSON, a non-object, a missing or mistyped field, empty text, non-UTF-8
bytes, a truncated gzip, a columnar file without a mapped column.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from jaxforget.data import formats
from jaxforget.data.fields import FieldMap, field_map, task_example, task_name_of, upstream_example
from jaxforget.data.records import ROLES, TaskExample, UpstreamExample, parse_task_record, str_field
from jaxforget.selection import allocate

__all__ = ["ROLES", "TaskExample", "UpstreamExample", "parse_task_record", "str_field", "read_jsonl",
           "read_upstream", "iter_upstream", "sample_upstream", "sample_upstream_files", "read_task_file",
           "read_tasks", "split_task", "FieldMap", "field_map"]

log = logging.getLogger("jaxforget.data")
_UPSTREAM_SUFFIXES = formats.RECORD_SUFFIXES + (".txt",)


def _paths(path) -> list[Path]:
    return [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file (gunzipped when it ends in .gz)."""
    return formats.iter_json_lines(Path(path))


# ---------------------------------------------------------------------------------------------
# Upstream
# ---------------------------------------------------------------------------------------------

def iter_upstream(path: str | os.PathLike | Sequence[str | os.PathLike],
                  fields: FieldMap | None = None) -> Iterator[UpstreamExample]:
    """Every example of an upstream corpus, streamed in file then record order (ids not checked)."""
    fmap = fields or field_map("auto", kind="upstream")
    for f in (f for p in _paths(path) for f in formats.find_record_files(p, _UPSTREAM_SUFFIXES)):
        if formats.suffix(f) == ".txt":
            yield from _read_txt(f)
            continue
        name = formats.stem(f)
        for where, obj in formats.iter_records(f, required_columns=fmap.columns()):
            yield upstream_example(obj, where, fmap, default_id=f"{name}:{where.rpartition(':')[2].removeprefix('row ')}",
                                   default_source=name)


def _check_unique(examples: Sequence[UpstreamExample]) -> None:
    seen: dict[str, str] = {}
    for ex in examples:
        if ex.id in seen:
            raise ValueError(f"{ex.where}: duplicate example id {ex.id!r} (first at {seen[ex.id]})")
        seen[ex.id] = ex.where


def read_upstream(path: str | os.PathLike | Sequence[str | os.PathLike],
                  fields: FieldMap | None = None) -> list[UpstreamExample]:
    """All examples of an upstream corpus (see the module docstring), in file then record order."""
    out = list(iter_upstream(path, fields))
    if not out:
        raise ValueError(f"{', '.join(map(str, _paths(path)))}: the upstream corpus is empty")
    _check_unique(out)
    return out


def _read_txt(path: Path) -> list[UpstreamExample]:
    out, block, start = [], [], 0
    for lineno, line in list(formats.iter_lines(path)) + [(-1, "")]:
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            out.append(UpstreamExample(f"{path.stem}:{start}", "\n".join(block), path.stem, f"{path}:{start}"))
            block = []
    return out


Stratify = Literal["none", "proportional", "balanced"]


def _selection(counts: dict[str, int], n: int, rng: np.random.Generator, stratify: Stratify) -> dict[str | None, set]:
    """Chosen ordinals: {None: global ordinals} (stratify 'none') or {source: ordinals within the source}."""
    total = sum(counts.values())
    if not 0 < n <= total:
        raise ValueError(f"cannot sample {n} upstream examples from a corpus of {total}; "
                         "lower the number of examples or add data")
    if stratify == "none":
        return {None: set(rng.choice(total, n, replace=False).tolist())}
    if stratify not in ("proportional", "balanced"):
        raise ValueError(f"stratify must be 'none', 'proportional' or 'balanced', got {stratify!r}")
    names = sorted(counts)
    quota = _quotas(np.array([counts[s] for s in names]), n, balanced=stratify == "balanced")
    log.info("stratified sample (%s): %s", stratify, dict(zip(names, quota.tolist())))
    # the same draws as choosing among each source's list of positions (sample_upstream)
    return {s: set(rng.choice(counts[s], q, replace=False).tolist()) for s, q in zip(names, quota)}


def _pick(examples: Iterator[UpstreamExample], chosen: dict[str | None, set]) -> Iterator[UpstreamExample]:
    seen: dict[str | None, int] = {}
    for ex in examples:
        key = None if None in chosen else ex.source
        k = seen.get(key, 0)
        seen[key] = k + 1
        if k in chosen.get(key, ()):
            yield ex


def sample_upstream(examples: Sequence[UpstreamExample], n: int | None, *, seed: int,
                    stratify: Stratify = "none") -> list[UpstreamExample]:
    """n examples chosen without replacement by a seeded draw, returned in corpus order.

    stratify: 'none' (uniform), 'proportional' (each source gets its share of n, largest remainder)
    or 'balanced' (equal counts per source; a source with too few examples gives all it has and the
    rest is spread over the others). n=None keeps every example.
    """
    if n is None or n == len(examples):
        return list(examples)
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.source] = counts.get(ex.source, 0) + 1
    return list(_pick(iter(examples), _selection(counts, n, np.random.default_rng([seed, 11]), stratify)))


def sample_upstream_files(path: str | os.PathLike | Sequence[str | os.PathLike], n: int | None, *, seed: int,
                          stratify: Stratify = "none", fields: FieldMap | None = None) -> list[UpstreamExample]:
    """`sample_upstream(read_upstream(path), n, ...)` without holding the corpus: one pass counts the
    examples of each source (validating every record), a second keeps the selected ones. The same
    examples as sample_upstream for the same seed; ids must be unique within the sample."""
    counts: dict[str, int] = {}
    for ex in iter_upstream(path, fields):
        counts[ex.source] = counts.get(ex.source, 0) + 1
    total = sum(counts.values())
    if not total:
        raise ValueError(f"{', '.join(map(str, _paths(path)))}: the upstream corpus is empty")
    if n is None or n == total:
        out = list(iter_upstream(path, fields))
    else:
        out = list(_pick(iter_upstream(path, fields), _selection(counts, n, np.random.default_rng([seed, 11]), stratify)))
    log.info("upstream: %d of %d examples (%d sources)", len(out), total, len(counts))
    _check_unique(out)
    return out


def _quotas(sizes: np.ndarray, n: int, *, balanced: bool) -> np.ndarray:
    if not balanced:
        return allocate(sizes, n)
    q = np.zeros_like(sizes)
    while q.sum() < n:  # water-filling: equal shares, capped by what each source has
        open_ = np.flatnonzero(q < sizes)
        share = max(1, (n - q.sum()) // len(open_))
        for i in open_:
            q[i] += min(share, sizes[i] - q[i], n - q.sum())
            if q.sum() == n:
                break
    return q




# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------

def _task_fields(fields: FieldMap | None) -> FieldMap:
    return fields or field_map("auto", kind="task")


def read_task_file(path: str | os.PathLike, name: str, *, check_task_field: bool = True,
                   fields: FieldMap | None = None) -> list[TaskExample]:
    """Every record of one record file (or save_to_disk directory), as examples of task `name`; with the
    'auto' preset a `task` field, if any, must agree (unless `check_task_field` is False: a file that
    mixes sources, e.g. exact-match prompts)."""
    path, fmap = Path(path), _task_fields(fields)
    records = []
    for where, obj in formats.iter_records(path, required_columns=fmap.columns()):
        if check_task_field and fmap.preset == "auto" and "task" in obj and obj["task"] != name:
            raise ValueError(f"{where}: field 'task'={obj['task']!r} differs from the file's task {name!r}")
        records.append(task_example(obj, where, name, fmap))
    if not records:
        raise ValueError(f"{path}: empty task (no records)")
    return records


def read_tasks(path: str | os.PathLike, fields: FieldMap | None = None) -> dict[str, list[TaskExample]]:
    """task name -> examples (file order), from a directory of record files (one task each, named by its
    path without the suffix) or one file (or save_to_disk directory) whose records name their task."""
    path, fmap = Path(path), _task_fields(fields)
    tasks: dict[str, list[TaskExample]] = {}
    if path.is_dir() and not formats.is_dataset_dir(path):
        for f in formats.find_record_files(path, formats.RECORD_SUFFIXES):
            rel = f.relative_to(path)
            name = (rel.parent / formats.stem(rel)).as_posix()
            tasks[name] = read_task_file(f, name, fields=fmap)
        return tasks
    for where, obj in formats.iter_records(formats.find_record_files(path, formats.RECORD_SUFFIXES)[0],
                                           required_columns=fmap.columns() + fmap.columns(["task"])):
        name = task_name_of(obj, fmap, where)
        tasks.setdefault(name, []).append(task_example(obj, where, name, fmap))
    if not tasks:
        raise ValueError(f"{path}: empty task file (no records)")
    return tasks


def split_task(examples: Sequence[TaskExample], *, val_fraction: float = 0.1, seed: int = 0,
               max_val: int | None = None) -> tuple[list[TaskExample], list[TaskExample]]:
    """(train, validation), each in file order; the draw depends on (seed, task name) only.

    round(val_fraction * n) validation examples (at least 1 when val_fraction > 0 and n >= 2, at most
    max_val); the rest train. Seeding by the task name keeps a task's split unchanged when other tasks
    are added or removed.
    """
    if not examples:
        raise ValueError("split_task: no examples")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(examples)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    if max_val is not None:
        n_val = min(n_val, max_val)
    task = examples[0].task
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    val = np.zeros(n, bool)
    val[rng.permutation(n)[:n_val]] = True
    return [e for e, v in zip(examples, val) if not v], [e for e, v in zip(examples, val) if v]
