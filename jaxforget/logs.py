"""What an entry point prints through :mod:`logging`: jaxforget's own lines, not the libraries' INFO noise.

Every ``python -m jaxforget.<step>`` calls :func:`configure_logging` once, before any work
(:func:`jaxforget.cli.run` does it). By default jaxforget's loggers (``jaxforget.*``) print INFO and
above, and every other library prints only its warnings and errors: absl/orbax checkpoint INFO lines
(``_SignalingThread.join() waiting for signals``), jax's ``Unable to initialize backend 'tpu'``,
tensorboardX's tag renames, and transformers' advisory ``PyTorch was not found`` are gone.
``--verbose`` or ``JAXFORGET_LOG=info`` brings the libraries' INFO lines back; ``JAXFORGET_LOG=debug``
prints DEBUG from everything. ``--quiet`` (where an entry point has it) also drops jaxforget's own
INFO lines; warnings and errors always print.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

ENV = "JAXFORGET_LOG"
"""Environment variable: ``info`` or ``debug`` (the libraries' log lines too), ``warning`` (the default)."""
LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
"""Other libraries' lines (with --verbose / $JAXFORGET_LOG): when and who, since they are not ours."""


class Formatter(logging.Formatter):
    """The one format of jaxforget's own lines, whichever command logs them: an INFO line is the message
    alone, as the lines a command prints itself (`echo`) are; a warning reads ``warning: <message>`` and an
    error ``error: <message>``, as the user-error line of :func:`jaxforget.cli.execute` does. Other
    libraries' lines keep :data:`FORMAT`."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.name != "jaxforget" and not record.name.startswith("jaxforget."):
            return super().format(record)
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        return f"warning: {message}" if record.levelno >= logging.WARNING else message

_TRANSFORMERS_ENV = "TRANSFORMERS_NO_ADVISORY_WARNINGS"

_handler: logging.Handler | None = None  # the root handler this module added, so a second call adds none
_set_env = False  # whether this module set _TRANSFORMERS_ENV (and so may unset it)


def library_level(verbose: bool = False) -> int:
    """The level of other libraries' loggers: DEBUG / INFO from ``$JAXFORGET_LOG``, INFO with
    ``verbose``, else WARNING. An unknown ``$JAXFORGET_LOG`` is a ValueError naming the choices."""
    value = os.environ.get(ENV, "").strip().lower()
    if value and value not in LEVELS:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(LEVELS)}")
    level = LEVELS.get(value, logging.WARNING)
    return min(level, logging.INFO) if verbose else level


def configure_logging(verbose: bool = False, *, quiet: bool = False) -> int:
    """Set up logging for a command-line run; returns the level given to the other libraries.

    jaxforget's loggers print INFO (DEBUG under ``JAXFORGET_LOG=debug``), or only WARNING with
    ``quiet`` (and not ``verbose``); every other logger prints from :func:`library_level` up.
    Adds one stderr handler to the root logger unless it already has one (a test's capture handler
    is kept), and sets ``TRANSFORMERS_NO_ADVISORY_WARNINGS`` unless verbose (transformers reads it
    when it logs). Safe to call again: levels are reset, no second handler is added.
    """
    global _handler, _set_env
    lib = library_level(verbose)
    own = min(lib, logging.INFO)
    if quiet and not verbose:
        own = max(own, logging.WARNING)
    root = logging.getLogger()
    if _handler is None and not root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(Formatter())
        root.addHandler(_handler)
    root.setLevel(lib)
    logging.getLogger("jaxforget").setLevel(own)
    if lib > logging.INFO and _TRANSFORMERS_ENV not in os.environ:
        os.environ[_TRANSFORMERS_ENV] = "1"
        _set_env = True
    elif lib <= logging.INFO and _set_env:
        os.environ.pop(_TRANSFORMERS_ENV, None)
        _set_env = False
    return lib


class Held:
    """What :func:`held_stderr` held back (``text``, set when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def held_stderr(*, release: bool = False) -> Iterator[Held]:
    """Hold back everything written to the process's standard error (file descriptor 2, so also the
    messages C++ libraries and their threads print, e.g. orbax/tensorstore tracebacks about a damaged
    checkpoint) while the block runs; ``held.text`` has it afterwards, and ``release`` writes it out
    then (--verbose). Used around calls whose failure jaxforget reports in one line of its own."""
    held = Held()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            held.text = tmp.read().decode("utf-8", errors="replace")
            if release and held.text:
                sys.stderr.write(held.text)
                sys.stderr.flush()


def drop_closed_loop_noise() -> None:
    """From now on, drop the "RuntimeError: Event loop is closed" tracebacks that I/O threads print when
    they complete after the asyncio loop that awaited them ended with an error (orbax/tensorstore, once a
    restore has failed: the failure itself is reported in one line). Other unraisable errors still print.
    Idempotent."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxforget", False):
        return

    def hook(unraisable) -> None:
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)

    hook._jaxforget = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
