"""Field mapping: which field of a record holds what, by named presets plus `role=field` overrides.

Each preset is one row of a declarative table (`UPSTREAM_PRESETS`, `TASK_PRESETS`): its fields (role ->
dotted path), the roles every record must have, and the rules the paper's code applied to that corpus.
A record goes one way: file -> raw record (`formats`) -> the preset's row -> an example (here).

Upstream presets (roles text, id, source):
    auto    text; id and source if present (source: `source`, else `domain`, else the file's name)
    dolma   text, id, source (all required)
    pile    text, source = meta.pile_set_name (the domain); id = `file:line`; only documents of more than
            100 characters (the paper's filter; shorter ones are passed over, their lines keep their ids)
    tulu    chat examples (the instruct setup's held-out Tulu sample): the first user turn -> the first
            assistant turn, scored on the answer only; id, source = the `dataset` value's prefix
Task presets:
    auto    the jaxforget records: prompt + completion, messages, or text (roles prompt, completion,
            messages, text, task)
    flan    prompt = inputs, completion = targets (task = task_name). In a directory, `{task}_train.json`
            and `{task}_validation.json` are one task `{task}` with its two splits (the train file is
            trained on, as the paper did; the validation file is the held-out split).
    dolly   instruction, context, response: prompt "Context: {context}\\n\\n{instruction}" when context is a
            non-empty string (whitespace-only included, as the paper's code), else the instruction;
            completion = response (task = category)
    tulu    messages: the first user turn -> the first assistant turn after it, system turns skipped
            (task = the `dataset` value's part before the first dot, so the six `science.*` subsets are
            one task, as the paper's code grouped them: 11 tasks in Tulu v2)
The `task` role names a record's task when one file holds several tasks; a directory of files gives
one task per file instead, except under dolly and tulu, whose records always name their task (a
directory is then the collection's shards, e.g. Tulu's Parquet files). A field path may be dotted for
nested objects (`meta.pile_set_name`). An override (`--data.task-fields prompt=question`) replaces the preset's field for that role and
makes it required; a role the preset does not have is an error listing the ones it has.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

from jaxforget.data.records import TaskExample, UpstreamExample, message_role, parse_task_record, str_field

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Preset:
    """One row of a preset table: the fields of a corpus's records and the rules its reader applies."""

    fields: Mapping[str, str]
    """role -> dotted field path."""
    required: tuple[str, ...] = ()
    """Roles every record must have."""
    record: Literal["auto", "pair", "dolly", "first_turn", "text"] = "auto"
    """How a record becomes an example: auto (the jaxforget task records), pair (prompt -> completion),
    dolly (context + instruction -> response), first_turn (first user -> first assistant message), text
    (an upstream document)."""
    task_prefix: bool = False
    """Name a record's task by its task value's part before the first dot (Tulu's `science.*`)."""
    split_suffixes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """File-stem suffix -> split (FLAN's `_train` / `_validation`): files differing only by it are one task."""
    min_chars: int = 0
    """Documents of fewer characters are passed over (the Pile's `len(text) > 100`: 101)."""
    task_in_record: bool = False
    """Every record names its task (Tulu's `dataset`, Dolly's `category`): a directory is shards of one
    collection, its records grouped by task, not one task per file."""


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """A preset with its overrides applied."""

    preset: str
    fields: Mapping[str, str]
    """role -> dotted field path."""
    required: tuple[str, ...]
    """Roles every record must have."""
    overridden: tuple[str, ...] = ()
    rules: Preset = Preset({})
    """The preset's row (its rules; its fields before the overrides)."""

    def columns(self, roles: Sequence[str] | None = None) -> list[str]:
        """Top-level columns a columnar file must have: those of the required roles."""
        return list(dict.fromkeys(self.fields[r].split(".")[0] for r in (roles or self.required)))


UPSTREAM_PRESETS: dict[str, Preset] = {
    "auto": Preset(dict(text="text", id="id", source="source"), ("text",), "text"),
    "dolma": Preset(dict(text="text", id="id", source="source"), ("text", "id", "source"), "text"),
    "pile": Preset(dict(text="text", source="meta.pile_set_name"), ("text", "source"), "text", min_chars=101),
    "tulu": Preset(dict(messages="messages", id="id", source="dataset"), ("messages",), "first_turn",
                   task_prefix=True),
}
TASK_PRESETS: dict[str, Preset] = {
    "auto": Preset(dict(prompt="prompt", completion="completion", messages="messages", text="text", task="task")),
    "flan": Preset(dict(prompt="inputs", completion="targets", task="task_name"), ("prompt", "completion"), "pair",
                   split_suffixes={"_train": "train", "_validation": "validation"}),
    "dolly": Preset(dict(instruction="instruction", context="context", response="response", task="category"),
                    ("instruction", "response"), "dolly", task_in_record=True),
    "tulu": Preset(dict(messages="messages", task="dataset"), ("messages",), "first_turn", task_prefix=True,
                   task_in_record=True),
}


def field_map(preset: str, overrides: Sequence[str] = (), *, kind: str) -> FieldMap:
    """The FieldMap of `preset` (kind 'upstream' or 'task') with `role=field` overrides applied."""
    presets = UPSTREAM_PRESETS if kind == "upstream" else TASK_PRESETS
    if preset not in presets:
        raise ValueError(f"unknown {kind} preset {preset!r}; known: {sorted(presets)}")
    rules = presets[preset]
    fields, required = dict(rules.fields), list(rules.required)
    done = []
    for item in overrides:
        role, eq, path = item.partition("=")
        role, path = role.strip(), path.strip()
        if not eq or not role or not path:
            raise ValueError(f"{kind} field mapping {item!r}: expected role=field (e.g. text=content)")
        if role not in fields:
            raise ValueError(f"{kind} field mapping {item!r}: unknown role {role!r} for preset {preset!r}; "
                             f"its roles: {sorted(fields)}")
        fields[role] = path
        done.append(role)
        if role not in required and not (kind == "task" and role == "task"):
            required.append(role)
    return FieldMap(preset, fields, tuple(required), tuple(done), rules)


def get_path(obj: Any, path: str) -> Any:
    """obj[a][b] for path 'a.b'; _MISSING when a key is absent (a flat key containing dots wins)."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _named(fmap: FieldMap, role: str) -> str:
    path = fmap.fields[role]
    return f"field {path!r}" + (f" ({role})" if path != role else "")


def _get(obj: dict, fmap: FieldMap, role: str, where: str, *, string: bool = True, nonempty: bool = True) -> Any:
    """The value of `role`; None when absent and not required (ValueError when required)."""
    path = fmap.fields.get(role)
    value = _MISSING if path is None else get_path(obj, path)
    if value is _MISSING or value is None:
        if role in fmap.required:
            raise ValueError(f"{where}: missing field {path!r} ({role} under the {fmap.preset!r} field mapping)")
        return None
    if string:
        return str_field({path: value}, path, where, nonempty=nonempty)
    return value


def upstream_example(obj: dict, where: str, fmap: FieldMap, *, default_id: str, default_source: str) -> UpstreamExample:
    """An UpstreamExample from one record under `fmap`."""
    messages = None
    if fmap.rules.record == "first_turn":
        messages = _first_turn(obj, fmap, where)
        text = f"{messages[0][1]}\n\n{messages[1][1]}"
    else:
        text = _get(obj, fmap, "text", where)
    ex_id = _get(obj, fmap, "id", where, string=False)
    if ex_id is None:
        ex_id = default_id
    elif not isinstance(ex_id, (str, int)) or isinstance(ex_id, bool):
        raise ValueError(f"{where}: {_named(fmap, 'id')} must be a string or an integer, got {type(ex_id).__name__}")
    source = _get(obj, fmap, "source", where, string=False)
    if source is None and fmap.preset == "auto" and "source" not in fmap.overridden:
        source = obj.get("domain")
    if source is None:
        source = default_source
    if not isinstance(source, str):
        raise ValueError(f"{where}: {_named(fmap, 'source')} must be a string, got {type(source).__name__}")
    if fmap.rules.task_prefix:
        source = source.split(".", 1)[0]
    return UpstreamExample(str(ex_id), text, source, where, messages)


def _first_turn(obj: dict, fmap: FieldMap, where: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(("user", first user turn), ("assistant", the first assistant turn after it)); system turns skipped."""
    msgs = _get(obj, fmap, "messages", where, string=False)
    if not isinstance(msgs, list):
        raise ValueError(f"{where}: field {fmap.fields['messages']!r} must be a list of messages")
    user = None
    for k, m in enumerate(msgs):
        role = message_role(m, k, where)
        if role == "user" and user is None:
            user = str_field(m, "content", f"{where}: messages[{k}]")
        elif role == "assistant" and user is not None:
            return ("user", user), ("assistant", str_field(m, "content", f"{where}: messages[{k}]"))
    raise ValueError(f"{where}: no user turn followed by an assistant turn in {fmap.fields['messages']!r}")


def task_name_of(obj: dict, fmap: FieldMap, where: str) -> str:
    """The task a record of a multi-task file belongs to (the `task` role)."""
    path = fmap.fields.get("task", "task")
    value = get_path(obj, path)
    if value is _MISSING or value is None:
        raise ValueError(f"{where}: missing field {path!r}, which names the record's task in a single task file "
                         "(or give a directory with one file per task, or map it: --data.task-fields task=FIELD)")
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
        raise ValueError(f"{where}: field {path!r} (task) must be a non-empty string, got {value!r}")
    name = str(value)
    if fmap.rules.task_prefix:
        name = name.split(".", 1)[0]
        if not name.strip():
            raise ValueError(f"{where}: field {path!r} (task) {value!r} has nothing before its first dot")
    return name


def task_example(obj: dict, where: str, task: str, fmap: FieldMap, split: str | None = None) -> TaskExample:
    """A TaskExample from one record under `fmap` (see the module docstring for each preset)."""
    rule = fmap.rules.record
    if rule == "auto":
        if fmap.overridden:  # rename the mapped fields to the canonical ones, then the usual parser
            for role in fmap.overridden:
                _get(obj, fmap, role, where, string=False)  # a missing mapped field names the file's field
            obj = {role: v for role, path in fmap.fields.items() if (v := get_path(obj, path)) is not _MISSING}
        return dataclasses.replace(parse_task_record(obj, task, where), split=split)
    if rule == "pair":
        return TaskExample(task, where, prompt=_get(obj, fmap, "prompt", where, nonempty=False),
                           completion=_get(obj, fmap, "completion", where), split=split)
    if rule == "dolly":
        instruction = _get(obj, fmap, "instruction", where)
        context = _get(obj, fmap, "context", where, nonempty=False) or ""
        # the paper's code tests the string, not its content: a context of spaces is kept
        prompt = f"Context: {context}\n\n{instruction}" if context else instruction
        return TaskExample(task, where, prompt=prompt, completion=_get(obj, fmap, "response", where), split=split)
    if rule == "first_turn":
        return TaskExample(task, where, messages=_first_turn(obj, fmap, where), split=split)
    raise ValueError(f"task preset {fmap.preset!r}: record rule {rule!r} makes no task example")
