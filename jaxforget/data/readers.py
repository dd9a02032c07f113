"""Readers for upstream corpora and task data, with errors that name the file and record.

Files (`jaxforget.data.formats`): JSON lines (`.jsonl`, `.json`, gzipped or zstd-compressed), JSON arrays
(`.json`, `.json.gz`, `.json.zst`), `.parquet`, `datasets.save_to_disk` directories, and (upstream only)
`.txt`; a path is one of them or a directory of them (sorted, recursive). Which field holds what is a
`FieldMap` (`jaxforget.data.fields`): a named preset (upstream auto / dolma / pile / tulu; tasks auto /
flan / dolly / tulu) plus `role=field` overrides.

Upstream corpus (`read_upstream`, `iter_upstream`, `sample_upstream_files`), preset 'auto':
  - records with `text` (str); optional `id` (str or int; default `<name>:<line, row or item>`, `<name>`
    the file's path relative to the directory given, without suffix) and `source` or `domain` (default:
    the file stem).
  - `*.txt`: plain text; each block of non-blank lines is one example, id `<name>:<first line>`,
    source the file stem.
  Ids must be unique in the whole corpus (checked while streaming, whatever the sample); they are the
  column names of the forgetting matrix, so rows measured by different jobs line up. `sample_upstream` (a list) and `sample_upstream_files` (a corpus streamed
  twice: counts per source, then the selected records; constant memory in the corpus size) select the
  same N examples for the same seed, optionally stratified by source.

Tasks (`read_tasks`): a directory of record files (one task per file, named by its path without the
suffix; with the 'flan' preset `{task}_train.json` + `{task}_validation.json` are one task with its
splits) or one file whose records carry a task field. Preset 'auto' records are one of
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

import array
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

def _named_files(roots: Sequence[Path], suffixes: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(file, name) of every record file under `roots`: a file given itself is named by its stem, a file
    found in a directory by its path relative to that directory without the suffix (`train/00` for
    `pile/train/00.jsonl.zst`), so two files of the same name in different folders never share ids."""
    for root in roots:
        for f in formats.find_record_files(root, suffixes):
            name = formats.stem(f) if f == root else (f.relative_to(root).parent / formats.stem(f)).as_posix()
            yield f, name


def iter_upstream(path: str | os.PathLike | Sequence[str | os.PathLike],
                  fields: FieldMap | None = None) -> Iterator[UpstreamExample]:
    """Every example of an upstream corpus, streamed in file then record order (ids not checked).

    Default ids are `<name>:<line>` (`<name>:<row>` in columnar files, `<name>:<item>` in JSON arrays),
    `<name>` the file's path relative to the directory given, without its suffix: unique by construction
    and independent of any sample drawn. Default sources are the file's stem."""
    fmap = fields or field_map("auto", kind="upstream")
    min_chars, short = fmap.rules.min_chars, 0
    for f, name in _named_files(_paths(path), _UPSTREAM_SUFFIXES):
        if formats.suffix(f) == ".txt":
            yield from _read_txt(f, name)
            continue
        for where, obj in formats.iter_records(f, required_columns=fmap.columns()):
            pos = where.rpartition(":")[2].removeprefix("row ").removeprefix("item ")
            ex = upstream_example(obj, where, fmap, default_id=f"{name}:{pos}", default_source=formats.stem(f))
            if len(ex.text) < min_chars:
                short += 1
                continue
            yield ex
    if short:
        log.info("upstream: passed over %d document(s) of fewer than %d characters (--data.upstream-preset %s)",
                 short, min_chars, fmap.preset)


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


def _read_txt(path: Path, name: str) -> list[UpstreamExample]:
    out, block, start = [], [], 0
    for lineno, line in list(formats.iter_lines(path)) + [(-1, "")]:
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            out.append(UpstreamExample(f"{name}:{start}", "\n".join(block), path.stem, f"{path}:{start}"))
            block = []
    return out


Stratify = Literal["none", "proportional", "balanced", "first"]


def _selection(counts: dict[str, int], n: int, rng: np.random.Generator, stratify: Stratify) -> dict[str | None, set]:
    """Chosen ordinals: {None: global ordinals} (stratify 'none') or {source: ordinals within the source}."""
    total = sum(counts.values())
    if not 0 < n <= total:
        raise ValueError(f"cannot sample {n} upstream examples from a corpus of {total}; "
                         "lower the number of examples or add data")
    if stratify == "none":
        return {None: set(rng.choice(total, n, replace=False).tolist())}
    if stratify == "first":  # the paper's Pile sample: the first n documents, in file then record order
        return {None: set(range(n))}
    if stratify not in ("proportional", "balanced"):
        raise ValueError(f"stratify must be 'none', 'proportional', 'balanced' or 'first', got {stratify!r}")
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

    stratify: 'none' (uniform), 'first' (the first n, no draw: the paper's Pile documents), 'proportional'
    (each source gets its share of n, largest remainder)
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
    examples of each source (validating every record and checking that no two records of the whole
    corpus share an id, so the outcome does not depend on the draw), a second keeps the selected ones.
    The same examples as sample_upstream for the same seed."""
    counts: dict[str, int] = {}
    hashes = array.array("q")  # 8 bytes a record: the id check of a corpus of millions fits in memory
    for ex in iter_upstream(path, fields):
        counts[ex.source] = counts.get(ex.source, 0) + 1
        hashes.append(hash(ex.id))
    total = sum(counts.values())
    if not total:
        raise ValueError(f"{', '.join(map(str, _paths(path)))}: the upstream corpus is empty")
    h = np.sort(np.frombuffer(hashes, np.int64))
    if (h[1:] == h[:-1]).any():  # find the records (a third pass, only on this error)
        dup = set(h[1:][h[1:] == h[:-1]].tolist())
        _check_unique([ex for ex in iter_upstream(path, fields) if hash(ex.id) in dup])
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
                   fields: FieldMap | None = None, split: str | None = None) -> list[TaskExample]:
    """Every record of one record file (or save_to_disk directory), as examples of task `name`; with the
    'auto' preset a `task` field, if any, must agree (unless `check_task_field` is False: a file that
    mixes sources, e.g. exact-match prompts)."""
    path, fmap = Path(path), _task_fields(fields)
    records = []
    for where, obj in formats.iter_records(path, required_columns=fmap.columns()):
        if check_task_field and fmap.preset == "auto" and "task" in obj and obj["task"] != name:
            raise ValueError(f"{where}: field 'task'={obj['task']!r} differs from the file's task {name!r}")
        records.append(task_example(obj, where, name, fmap, split))
    if not records:
        raise ValueError(f"{path}: empty task (no records)")
    return records


def read_tasks(path: str | os.PathLike, fields: FieldMap | None = None) -> dict[str, list[TaskExample]]:
    """task name -> examples (file order), from a directory of record files (one task each, named by its
    path without the suffix, or by its stem without a split suffix of the preset, e.g. FLAN's `_train`)
    or one file (or save_to_disk directory) whose records name their task, or, under a preset whose
    records always name their task (Tulu, Dolly), a directory of such files (shards)."""
    path, fmap = Path(path), _task_fields(fields)
    tasks: dict[str, list[TaskExample]] = {}
    if path.is_dir() and not formats.is_dataset_dir(path) and not fmap.rules.task_in_record:
        origin: dict[str, dict[str | None, Path]] = {}  # task -> split -> its file
        for f, name in _named_files([path], formats.RECORD_SUFFIXES):
            split = None
            for suf, sp in fmap.rules.split_suffixes.items():
                if name.endswith(suf) and len(name) > len(suf):
                    name, split = name[: -len(suf)], sp
                    break
            seen = origin.setdefault(name, {})
            if split in seen or (seen and (split is None or None in seen)):
                raise ValueError(f"{f}: task {name!r} is also read from {next(iter(seen.values()))}; keep one "
                                 "file per task" + (" and split" if split else ""))
            seen[split] = f
            tasks.setdefault(name, []).extend(read_task_file(f, name, fields=fmap, split=split))
        for name, seen in origin.items():
            if None not in seen and "train" not in seen:
                suf = next(k for k, v in fmap.rules.split_suffixes.items() if v == "train")
                raise ValueError(f"{next(iter(seen.values()))}: task {name!r} has no {name}{suf} file to train on")
        return tasks
    files = formats.find_record_files(path, formats.RECORD_SUFFIXES)
    for f in files if fmap.rules.task_in_record else files[:1]:  # shards of one collection, or the one file
        for where, obj in formats.iter_records(f, required_columns=fmap.columns() + fmap.columns(["task"])):
            name = task_name_of(obj, fmap, where)
            tasks.setdefault(name, []).append(task_example(obj, where, name, fmap))
    if not tasks:
        raise ValueError(f"{path}: empty task file (no records)")
    return tasks


def split_task(examples: Sequence[TaskExample], *, val_fraction: float = 0.1, seed: int = 0,
               max_val: int | None = None) -> tuple[list[TaskExample], list[TaskExample]]:
    """(train, validation), each in file order; the draw depends on (seed, task name) only.

    Examples that carry their split (FLAN's `{task}_train.json` / `_validation.json`) keep it: no draw.

    round(val_fraction * n) validation examples (at least 1 when val_fraction > 0 and n >= 2, at most
    max_val); the rest train. Seeding by the task name keeps a task's split unchanged when other tasks
    are added or removed.
    """
    if not examples:
        raise ValueError("split_task: no examples")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if any(e.split is not None for e in examples):
        return [e for e in examples if e.split == "train"], [e for e in examples if e.split != "train"]
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
