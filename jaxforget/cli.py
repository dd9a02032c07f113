"""What every ``python -m jaxforget.<step>`` entry point shares."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import tyro

from jaxforget.logs import configure_logging
from jaxforget.store import RunError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RunError)
"""What a command reports as one ``error:`` line and exit status 2: bad flags, missing or damaged files
(every loader names the file), a run directory that cannot be used as asked."""

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


def parse_error_line(text: str) -> str:
    """tyro's boxed parse error as one line: the box's first section (what is wrong, naming the flag),
    without the frame, the help text of the argument and the pointer to --help."""
    lines = []
    for raw in text.splitlines()[1:]:  # the first line is the box's title bar
        line = raw.strip().strip("│╭╮╰╯").strip()
        if not line or set(line) <= set("─━═"):
            if lines:
                break
            continue
        lines.append(line)
    return " ".join(lines) or " ".join(text.split())[:300] or "invalid command line"


def parse(config_type: type[C], argv: list[str] | None, prog: str) -> tuple[C, bool]:
    """``(config, verbose)`` from the command line: ``config_type`` plus ``--verbose``, with ``prog``
    (``python -m jaxforget.<step>``) as the program name in usage lines and ``--help``."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            parsed = tyro.cli(with_verbose(config_type), args=argv, prog=prog)
    except SystemExit as e:
        if e.code in (0, None):
            sys.stderr.write(held.getvalue())
            raise
        print(f"error: {parse_error_line(held.getvalue())} (python -m {prog.removeprefix('python -m ')} --help "
              "lists the flags)", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stderr.write(held.getvalue())
    if type(parsed) is config_type:
        return parsed, bool(getattr(parsed, "verbose", False))
    fields = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(config_type) if f.init}
    return config_type(**fields), parsed.verbose


def run(config_type: type[C], main: Callable[[C], Any], argv: list[str] | None = None, *,
        errors: tuple[type[BaseException], ...] = USER_ERRORS, prog: str | None = None) -> Any:
    """Parse ``config_type`` (plus ``--verbose``) with tyro, set up logging
    (:func:`jaxforget.logs.configure_logging`, with the config's ``quiet`` where it has one) and call
    ``main(config)``. A user error (bad input, missing file) prints ``error: <message>`` to stderr and
    exits with status 2, without a traceback. ``prog`` is the program name of the usage line
    (default :func:`prog_name` of ``main``)."""
    config, verbose = parse(config_type, argv, prog or prog_name(main))
    return execute(config, main, errors=errors, verbose=verbose)


def execute(config: C, main: Callable[[C], Any], *, errors: tuple[type[BaseException], ...] = USER_ERRORS,
            verbose: bool = False) -> Any:
    """``main(config)`` as :func:`run` calls it once the flags are parsed: a user error is ``error: <message>``
    on one line of stderr and exit status 2."""
    try:
        configure_logging(verbose, quiet=bool(getattr(config, "quiet", False)))
        return main(config)
    except errors as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message holds
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
            if not isinstance(value, list):
                raise ValueError(f"{name}: expected a list, got {value!r}")
            inner = args[0] if args else Any
            return tuple(convert(inner, v, f"{name}[{i}]") for i, v in enumerate(value))
        expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,), Path: (str,)}.get(tp)
        if expected is not None and (not isinstance(value, expected) or (tp is not bool and isinstance(value, bool))):
            raise ValueError(f"{name}: expected {'a path' if tp is Path else tp.__name__}, got {value!r}")
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


# ------------------------------------------------------------------------------------------------
# Validation shared by the entry points: numeric ranges and output directories, checked before any work.


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: ``lo``/``hi`` bounds (open or closed), ``off`` a value outside
    them that turns the feature off (e.g. 0). Floats must also be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    off: float | None = None

    def accepts(self, v: float) -> bool:
        if self.off is not None and v == self.off:
            return True
        if self.lo is not None and not (v > self.lo if self.lo_open else v >= self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        if self.lo is None and self.hi is None:
            return ""  # any finite number
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            text = f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return text if self.off is None else f"{self.off:g} (off) or {text}"


FINITE = Range()
"""Any finite number (NaN and inf refused)."""


def at_least(lo: float) -> Range:
    return Range(lo=lo)


def above(lo: float) -> Range:
    return Range(lo=lo, lo_open=True)


def flag_name(path: str) -> str:
    """``train.clip_norm`` -> ``--train.clip-norm``: a field as the user types it."""
    return "--" + path.replace("_", "-")


def numeric_fields(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value of every int/float field (tuples of them included) of a nested config
    dataclass; None values (optional flags not given) are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(numeric_fields(value, f"{path}."))
        elif _is_number(value) or (isinstance(value, tuple) and value and all(_is_number(v) for v in value)):
            out[path] = value
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def range_errors(config: Any, ranges: dict[str, Range]) -> list[str]:
    """One message per numeric field of `config` outside its range in `ranges` (NaN and inf always are),
    naming the flag as typed: ``--train.clip-norm must be > 0; got -1.0``."""
    errors = []
    for path, value in numeric_fields(config).items():
        for v in (value if isinstance(value, tuple) else (value,)):
            rule = ranges.get(path)
            if isinstance(v, float) and not math.isfinite(v):
                errors.append(f"{flag_name(path)} must be a finite number{f' {rule}' if str(rule or '') else ''}; "
                              f"got {v}")
            elif rule is not None and not rule.accepts(v):
                errors.append(f"{flag_name(path)} must be {rule}; got {value if isinstance(value, tuple) else v}")
            else:
                continue
            break
    return errors


def check_ranges(config: Any, ranges: dict[str, Range]) -> None:
    """:func:`range_errors` of `config` as one ValueError (all of them, ``; ``-joined), or nothing: the first
    check of every command, before anything is loaded."""
    errors = range_errors(config, ranges)
    if errors:
        raise ValueError("; ".join(errors))


def numeric_flags(config_type: type, prefix: str = "") -> dict[str, type]:
    """Dotted path -> int or float of every numeric field of a (nested) config dataclass *type*, optional
    ones (``int | None``) and tuples (``tuple[int, ...]``) included: every flag a range table must cover."""
    out: dict[str, type] = {}
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(numeric_flags(tp, f"{prefix}{f.name}."))
            continue
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        for option in options:
            if typing.get_origin(option) is tuple:
                option = (typing.get_args(option) or (None,))[0]
            if option in (int, float):
                out[f"{prefix}{f.name}"] = option
    return out


def out_dir_error(path: Path, flag: str = "--out") -> str | None:
    """Why `path` cannot be (or become) a directory this process writes into, else None: it is a file,
    it lies under a file, or its nearest existing directory is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{flag} {path}: is a file, not a directory"
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        return f"{flag} {path}: {parent} is a file, so no directory can be created under it"
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag} {path}: {parent} is not writable (permission denied)"
    return None


# ------------------------------------------------------------------------------------------------
# How every command ends: what it wrote, what to open first, what to run next.


def closing(wrote: Sequence[Path | str], *, first: Path | str | None = None, next_steps: Sequence[str] = ()) -> str:
    """The block every command prints last (collect, analyze, predict, forecast, replay, plan): the files it
    wrote (one a line; a directory may stand for many, e.g. ``RUN/analysis/ (17 files)``), the one to open
    first, and the next command(s), labels aligned::

        wrote       runs/default/forgetting.npz
                    runs/default/summary.md
        open first  runs/default/summary.md
        next        python -m jaxforget.analyze runs/default
    """
    rows = [("wrote", str(w)) for w in wrote] or [("wrote", "nothing")]
    if first is not None:
        rows.append(("open first", str(first)))
    rows += [("next", n) for n in next_steps]
    width = max(len(label) for label, _ in rows)
    lines, last = [], None
    for label, value in rows:
        lines.append(f"{(label if label != last else ''):<{width}}  {value}")
        last = label
    return "\n".join(lines)
