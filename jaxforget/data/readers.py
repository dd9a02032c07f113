"""Readers for upstream corpora and task data, with errors that name the file and line (1-based).

Upstream corpus (`read_upstream`): a file or a directory of files (sorted, recursive)
  - `*.jsonl`: one JSON object per line with `text` (str); optional `id` (str or int; default
    `<file stem>:<line>`) and `source` or `domain` (default: the file stem).
  - `*.txt`: plain text; each block of non-blank lines is one example, id `<file stem>:<first line>`,
    source the file stem.
  Ids must be unique across the corpus; they are the column names of the forgetting matrix, so rows
  measured by different jobs line up. `sample_upstream` selects N of them by seeded sampling,
  optionally stratified by source.

Tasks (`read_tasks`): a directory of `*.jsonl` files (one task per file, named by the file stem) or
one `.jsonl` file whose records carry a `task` field. Each record is one of
  - {"prompt": str, "completion": str}
  - {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]} (Tulu/Dolly chat
    data; at least one assistant message, whose content is the loss target)
  - {"text": str} (language modelling on the whole text)
Other fields are ignored. `split_task` makes a seeded per-task train/validation split.

Blank lines are skipped (and counted in the log); a UTF-8 byte-order mark at the start of a file is
accepted; every other bad line is a `ValueError` naming `file:line`: malformed JSON, a non-object, a
missing or mistyped field, empty text, non-UTF-8 bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

log = logging.getLogger("jaxforget.data")

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class UpstreamExample:
    """One upstream (pre-training or instruction-tuning) example."""

    id: str
    text: str
    source: str
    """Domain or data source (for stratified sampling and per-domain reports)."""
    where: str
    """`file:line` of the record, for error messages."""


@dataclasses.dataclass(frozen=True)
class TaskExample:
    """One task record; exactly one of (prompt, completion), messages or text is set."""

    task: str
    where: str
    """`file:line` of the record, for error messages."""
    prompt: str | None = None
    completion: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    """(role, content) pairs."""
    text: str | None = None

    @property
    def kind(self) -> str:
        return "prompt" if self.prompt is not None else "messages" if self.messages is not None else "text"


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    if not files:
        raise ValueError(f"{path}: directory has no {' or '.join(suffixes)} files")
    return files


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without the newline); non-UTF-8 bytes name the line. A UTF-8
    byte-order mark opening the file (Windows and spreadsheet exports write one) is dropped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") \
                    from None
            yield lineno, line.rstrip("\r\n")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file."""
    path = Path(path)
    blank = 0
    for lineno, line in _lines(path):
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


def _str_field(obj: dict, name: str, where: str, *, nonempty: bool = True) -> str:
    if name not in obj:
        raise ValueError(f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return value


# ---------------------------------------------------------------------------------------------
# Upstream
# ---------------------------------------------------------------------------------------------

def read_upstream(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[UpstreamExample]:
    """All examples of an upstream corpus (see the module docstring), in file then line order."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    files = [f for p in paths for f in _files(Path(p), (".jsonl", ".txt"))]
    out: list[UpstreamExample] = []
    for f in files:
        out += _read_txt(f) if f.suffix == ".txt" else _read_upstream_jsonl(f)
    if not out:
        raise ValueError(f"{', '.join(map(str, paths))}: the upstream corpus is empty")
    seen: dict[str, str] = {}
    for ex in out:
        if ex.id in seen:
            raise ValueError(f"{ex.where}: duplicate example id {ex.id!r} (first at {seen[ex.id]})")
        seen[ex.id] = ex.where
    return out


def _read_upstream_jsonl(path: Path) -> list[UpstreamExample]:
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        text = _str_field(obj, "text", where)
        ex_id = obj.get("id", f"{path.stem}:{lineno}")
        if not isinstance(ex_id, (str, int)) or isinstance(ex_id, bool):
            raise ValueError(f"{where}: field 'id' must be a string or an integer, got {type(ex_id).__name__}")
        source = obj.get("source", obj.get("domain", path.stem))
        if not isinstance(source, str):
            raise ValueError(f"{where}: field 'source' must be a string, got {type(source).__name__}")
        out.append(UpstreamExample(str(ex_id), text, source, where))
    return out


def _read_txt(path: Path) -> list[UpstreamExample]:
    out, block, start = [], [], 0
    for lineno, line in list(_lines(path)) + [(-1, "")]:
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            out.append(UpstreamExample(f"{path.stem}:{start}", "\n".join(block), path.stem, f"{path}:{start}"))
            block = []
    return out


def sample_upstream(examples: Sequence[UpstreamExample], n: int | None, *, seed: int,
                    stratify: Literal["none", "proportional", "balanced"] = "none") -> list[UpstreamExample]:
    """n examples chosen without replacement by a seeded draw, returned in corpus order.

    stratify: 'none' (uniform), 'proportional' (each source gets its share of n, largest remainder)
    or 'balanced' (equal counts per source; a source with too few examples gives all it has and the
    rest is spread over the others). n=None keeps every example.
    """
    if n is None or n == len(examples):
        return list(examples)
    if not 0 < n <= len(examples):
        raise ValueError(f"cannot sample {n} upstream examples from a corpus of {len(examples)}; "
                         "lower the number of examples or add data")
    rng = np.random.default_rng([seed, 11])
    if stratify == "none":
        chosen = rng.choice(len(examples), n, replace=False)
    else:
        by_source: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by_source.setdefault(ex.source, []).append(i)
        names = sorted(by_source)
        sizes = np.array([len(by_source[s]) for s in names])
        quota = _quotas(sizes, n, balanced=stratify == "balanced")
        chosen = np.concatenate([rng.choice(by_source[s], q, replace=False) for s, q in zip(names, quota)])
        log.info("stratified sample (%s): %s", stratify, dict(zip(names, quota.tolist())))
    return [examples[i] for i in np.sort(chosen)]


def _quotas(sizes: np.ndarray, n: int, *, balanced: bool) -> np.ndarray:
    if not balanced:
        raw = n * sizes / sizes.sum()
        q = np.floor(raw).astype(int)
        q[np.argsort(-(raw - q), kind="stable")[: n - q.sum()]] += 1
        return q
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

def parse_task_record(obj: dict, task: str, where: str) -> TaskExample:
    """A TaskExample from one JSON object; ValueError naming `where` if it is not a valid record."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: field 'messages' must be a non-empty list")
        pairs = []
        for k, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise ValueError(f"{where}: messages[{k}] must be an object with 'role' and 'content'")
            role = _str_field(m, "role", f"{where}: messages[{k}]")
            if role not in ROLES:
                raise ValueError(f"{where}: messages[{k}] has role {role!r}; expected one of {ROLES}")
            pairs.append((role, _str_field(m, "content", f"{where}: messages[{k}]")))
        if not any(r == "assistant" for r, _ in pairs):
            raise ValueError(f"{where}: 'messages' has no assistant message (nothing to train on)")
        return TaskExample(task, where, messages=tuple(pairs))
    if "prompt" in obj or "completion" in obj:
        return TaskExample(task, where, prompt=_str_field(obj, "prompt", where, nonempty=False),
                           completion=_str_field(obj, "completion", where))
    if "text" in obj:
        return TaskExample(task, where, text=_str_field(obj, "text", where))
    raise ValueError(f"{where}: missing field: a task record needs 'prompt' and 'completion', 'messages' or "
                     f"'text' (found {sorted(obj)})")


def read_task_file(path: str | os.PathLike, name: str, *, check_task_field: bool = True) -> list[TaskExample]:
    """Every record of one JSONL file, as examples of task `name`; a `task` field, if any, must agree
    (unless `check_task_field` is False: a file that mixes sources, e.g. exact-match prompts)."""
    path = Path(path)
    records = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        if check_task_field and "task" in obj and obj["task"] != name:
            raise ValueError(f"{where}: field 'task'={obj['task']!r} differs from the file's task {name!r}")
        records.append(parse_task_record(obj, name, where))
    if not records:
        raise ValueError(f"{path}: empty task (no records)")
    return records


def read_tasks(path: str | os.PathLike) -> dict[str, list[TaskExample]]:
    """task name -> examples (file order), from a directory of JSONL files or one JSONL with `task`."""
    path = Path(path)
    tasks: dict[str, list[TaskExample]] = {}
    if path.is_dir():
        for f in _files(path, (".jsonl",)):
            name = f.relative_to(path).with_suffix("").as_posix()
            tasks[name] = read_task_file(f, name)
        return tasks
    for lineno, obj in read_jsonl(_files(path, (".jsonl",))[0]):
        where = f"{path}:{lineno}"
        name = _str_field(obj, "task", where)
        tasks.setdefault(name, []).append(parse_task_record(obj, name, where))
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
