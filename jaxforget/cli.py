"""What every ``python -m jaxforget.<step>`` entry point shares."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import tyro

from jaxforget.logs import configure_logging

C = TypeVar("C")

VERBOSE_HELP = ("Also print other libraries' INFO log lines (jax, orbax/absl, tensorboardX, transformers); "
                "the environment variable JAXFORGET_LOG=info|debug does the same.")


def prog_name(main: Callable[..., Any]) -> str:
    """``python -m jaxforget.<step>``: how the user runs the module that defines ``main`` (also when it
    runs as ``__main__``), so usage lines and tyro's "for full helptext run ..." never show a file path."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return f"python -m {module}"


def with_verbose(config_type: type[C]) -> type:
    """``config_type`` plus a ``--verbose`` flag (a frozen dataclass subclass, so tyro lists the flag
    with the others); :func:`run` strips it again before calling ``main``."""
    if any(f.name == "verbose" for f in dataclasses.fields(config_type)):  # the config has its own
        return config_type
    cls = dataclasses.make_dataclass(
        config_type.__name__, [("verbose", Annotated[bool, tyro.conf.arg(help=VERBOSE_HELP)], False)],
        bases=(config_type,), frozen=True)
    cls.__doc__ = inspect.getdoc(config_type)
    cls.__module__ = config_type.__module__
    return cls


def parse(config_type: type[C], argv: list[str] | None, prog: str) -> tuple[C, bool]:
    """``(config, verbose)`` from the command line: ``config_type`` plus ``--verbose``, with ``prog``
    (``python -m jaxforget.<step>``) as the program name in usage lines and ``--help``."""
    parsed = tyro.cli(with_verbose(config_type), args=argv, prog=prog)
    if type(parsed) is config_type:
        return parsed, bool(getattr(parsed, "verbose", False))
    fields = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(config_type) if f.init}
    return config_type(**fields), parsed.verbose


def run(config_type: type[C], main: Callable[[C], Any], argv: list[str] | None = None, *,
        errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError), prog: str | None = None) -> Any:
    """Parse ``config_type`` (plus ``--verbose``) with tyro, set up logging
    (:func:`jaxforget.logs.configure_logging`, with the config's ``quiet`` where it has one) and call
    ``main(config)``. A user error (bad input, missing file) prints ``error: <message>`` to stderr and
    exits with status 2, without a traceback. ``prog`` is the program name of the usage line
    (default :func:`prog_name` of ``main``)."""
    config, verbose = parse(config_type, argv, prog or prog_name(main))
    try:
        configure_logging(verbose, quiet=bool(getattr(config, "quiet", False)))
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
