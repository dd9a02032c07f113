"""The example types every reader produces, and the parsing of one jaxforget task record."""

from __future__ import annotations

import dataclasses
from typing import Any

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
    messages: tuple[tuple[str, str], ...] | None = None
    """A chat example ((user, ...), (assistant, ...)): rendered with the chat template and scored on the
    assistant's answer only, the closing end of turn excluded; `text` is then the two turns, for reading."""


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
    split: str | None = None
    """'train' or 'validation' when the files give the split (FLAN's `{task}_train.json`); None: drawn by
    `split_task`."""

    @property
    def kind(self) -> str:
        return "prompt" if self.prompt is not None else "messages" if self.messages is not None else "text"


def str_field(obj: dict, name: str, where: str, *, nonempty: bool = True) -> str:
    if name not in obj:
        raise ValueError(f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return value


def message_role(m: Any, k: int, where: str) -> str:
    """The role of ``messages[k]``, which must be an object with a known 'role'; ValueError naming `where`."""
    if not isinstance(m, dict):
        raise ValueError(f"{where}: messages[{k}] must be an object with 'role' and 'content'")
    role = str_field(m, "role", f"{where}: messages[{k}]")
    if role not in ROLES:
        raise ValueError(f"{where}: messages[{k}] has role {role!r}; expected one of {ROLES}")
    return role


def parse_task_record(obj: dict, task: str, where: str) -> TaskExample:
    """A TaskExample from one JSON object; ValueError naming `where` if it is not a valid record."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: field 'messages' must be a non-empty list")
        pairs = []
        for k, m in enumerate(msgs):
            pairs.append((message_role(m, k, where), str_field(m, "content", f"{where}: messages[{k}]")))
        if not any(r == "assistant" for r, _ in pairs):
            raise ValueError(f"{where}: 'messages' has no assistant message (nothing to train on)")
        return TaskExample(task, where, messages=tuple(pairs))
    if "prompt" in obj or "completion" in obj:
        return TaskExample(task, where, prompt=str_field(obj, "prompt", where, nonempty=False),
                           completion=str_field(obj, "completion", where))
    if "text" in obj:
        return TaskExample(task, where, text=str_field(obj, "text", where))
    raise ValueError(f"{where}: missing field: a task record needs 'prompt' and 'completion', 'messages' or "
                     f"'text' (found {sorted(obj)})")
