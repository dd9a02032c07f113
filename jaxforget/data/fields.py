"""Field mapping: which field of a record holds what, by named presets plus `role=field` overrides.

Upstream presets (roles text, id, source):
    auto    text; id and source if present (source: `source`, else `domain`, else the file's name)
    dolma   text, id, source (all required)
    pile    text, source = meta.pile_set_name (the domain); id = `file:line`
Task presets:
    auto    the jaxforget records: prompt + completion, messages, or text (roles prompt, completion,
            messages, text, task)
    flan    prompt = inputs, completion = targets (task = task_name)
    dolly   instruction, context, response: prompt "Context: {context}\\n\\n{instruction}" when context is
            non-empty, else the instruction; completion = response (task = category)
    tulu    messages: the first user turn -> the first assistant turn after it, system turns skipped
            (task = dataset)
The `task` role names a record's task when one file holds several tasks; a directory of files gives
one task per file instead. A field path may be dotted for nested objects (`meta.pile_set_name`).
An override (`--data.task-fields prompt=question`) replaces the preset's field for that role and
makes it required; a role the preset does not have is an error listing the ones it has.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from jaxforget.data.records import TaskExample, UpstreamExample, message_role, parse_task_record, str_field

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """A preset with its overrides applied."""

    preset: str
    fields: Mapping[str, str]
    """role -> dotted field path."""
    required: tuple[str, ...]
    """Roles every record must have."""
    overridden: tuple[str, ...] = ()

    def columns(self, roles: Sequence[str] | None = None) -> list[str]:
        """Top-level columns a columnar file must have: those of the required roles."""
        return list(dict.fromkeys(self.fields[r].split(".")[0] for r in (roles or self.required)))


UPSTREAM_PRESETS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "auto": (dict(text="text", id="id", source="source"), ("text",)),
    "dolma": (dict(text="text", id="id", source="source"), ("text", "id", "source")),
    "pile": (dict(text="text", source="meta.pile_set_name"), ("text", "source")),
}
TASK_PRESETS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "auto": (dict(prompt="prompt", completion="completion", messages="messages", text="text", task="task"), ()),
    "flan": (dict(prompt="inputs", completion="targets", task="task_name"), ("prompt", "completion")),
    "dolly": (dict(instruction="instruction", context="context", response="response", task="category"),
              ("instruction", "response")),
    "tulu": (dict(messages="messages", task="dataset"), ("messages",)),
}


def field_map(preset: str, overrides: Sequence[str] = (), *, kind: str) -> FieldMap:
    """The FieldMap of `preset` (kind 'upstream' or 'task') with `role=field` overrides applied."""
    presets = UPSTREAM_PRESETS if kind == "upstream" else TASK_PRESETS
    if preset not in presets:
        raise ValueError(f"unknown {kind} preset {preset!r}; known: {sorted(presets)}")
    fields, required = dict(presets[preset][0]), list(presets[preset][1])
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
    return FieldMap(preset, fields, tuple(required), tuple(done))


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
    return UpstreamExample(str(ex_id), text, source, where)


def task_name_of(obj: dict, fmap: FieldMap, where: str) -> str:
    """The task a record of a multi-task file belongs to (the `task` role)."""
    path = fmap.fields.get("task", "task")
    value = get_path(obj, path)
    if value is _MISSING or value is None:
        raise ValueError(f"{where}: missing field {path!r}, which names the record's task in a single task file "
                         "(or give a directory with one file per task, or map it: --data.task-fields task=FIELD)")
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
        raise ValueError(f"{where}: field {path!r} (task) must be a non-empty string, got {value!r}")
    return str(value)


def task_example(obj: dict, where: str, task: str, fmap: FieldMap) -> TaskExample:
    """A TaskExample from one record under `fmap` (see the module docstring for each preset)."""
    if fmap.preset == "auto":
        if fmap.overridden:  # rename the mapped fields to the canonical ones, then the usual parser
            for role in fmap.overridden:
                _get(obj, fmap, role, where, string=False)  # a missing mapped field names the file's field
            obj = {role: v for role, path in fmap.fields.items() if (v := get_path(obj, path)) is not _MISSING}
        return parse_task_record(obj, task, where)
    if fmap.preset == "flan":
        return TaskExample(task, where, prompt=_get(obj, fmap, "prompt", where, nonempty=False),
                           completion=_get(obj, fmap, "completion", where))
    if fmap.preset == "dolly":
        instruction = _get(obj, fmap, "instruction", where)
        context = _get(obj, fmap, "context", where, nonempty=False) or ""
        prompt = f"Context: {context}\n\n{instruction}" if context.strip() else instruction
        return TaskExample(task, where, prompt=prompt, completion=_get(obj, fmap, "response", where))
    if fmap.preset == "tulu":
        msgs = _get(obj, fmap, "messages", where, string=False)
        if not isinstance(msgs, list):
            raise ValueError(f"{where}: field {fmap.fields['messages']!r} must be a list of messages")
        user = answer = None
        for k, m in enumerate(msgs):
            role = message_role(m, k, where)
            if role == "user" and user is None:
                user = str_field(m, "content", f"{where}: messages[{k}]")
            elif role == "assistant" and user is not None:
                answer = str_field(m, "content", f"{where}: messages[{k}]")
                break
        if answer is None:
            raise ValueError(f"{where}: no user turn followed by an assistant turn in {fmap.fields['messages']!r}")
        return TaskExample(task, where, messages=(("user", user), ("assistant", answer)))
    raise ValueError(f"unknown task preset {fmap.preset!r}")
