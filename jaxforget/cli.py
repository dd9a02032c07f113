"""What every ``python -m jaxforget.<step>`` entry point shares."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tyro

C = TypeVar("C")


def parse(config_type: type[C], argv: list[str] | None, prog: str) -> C:
    """``config_type`` from the command line, with ``prog`` (``python -m jaxforget.<step>``) as the program
    name in usage lines and ``--help`` (tyro would show the module's file path)."""
    return tyro.cli(config_type, args=argv, prog=prog)


def run(config_type: type[C], main: Callable[[C], Any], argv: list[str] | None = None, *, prog: str,
        errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)) -> Any:
    """Parse ``config_type`` with tyro and call ``main(config)``. A user error (bad input, missing file)
    prints ``error: <message>`` to stderr and exits with status 2, without a traceback."""
    config = parse(config_type, argv, prog)
    try:
        return main(config)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def config_from_dict(config_type: type[C], values: Any, where: str = "config") -> C:
    """Rebuild a (nested, frozen) config dataclass from its ``dataclasses.asdict`` JSON form, e.g. the
    ``config`` a run recorded in ``meta.json``: lists become tuples, strings become Paths where the
    field is a Path; fields the JSON lacks keep their defaults (a run from an older version), and a
    field the dataclass does not have is an error naming it (``where`` prefixes the name)."""
    def convert(tp: Any, value: Any, name: str) -> Any:
        if value is None:
            return None
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in args if a is not type(None)]
            return convert(options[0], value, name) if len(options) == 1 else value
        if origin is typing.Literal or tp is Any:
            return value
        if dataclasses.is_dataclass(tp):
            return config_from_dict(tp, value, name)
        if origin is tuple:
            inner = args[0] if args else Any
            return tuple(convert(inner, v, f"{name}[{i}]") for i, v in enumerate(value))
        if tp is Path:
            return Path(value)
        return value

    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {type(values).__name__}")
    hints = typing.get_type_hints(config_type, include_extras=False)
    fields = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {config_type.__name__}")
    return config_type(**{k: convert(hints[k], v, f"{where}.{k}") for k, v in values.items()})


def to_jsonable(x: Any) -> Any:
    """``dataclasses.asdict`` output as JSON values (tuples as lists, Paths as strings): the inverse of
    :func:`config_from_dict`."""
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x
