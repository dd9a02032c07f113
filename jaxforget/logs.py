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

import logging
import os
import sys

ENV = "JAXFORGET_LOG"
"""Environment variable: ``info`` or ``debug`` (the libraries' log lines too), ``warning`` (the default)."""
LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

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
        _handler.setFormatter(logging.Formatter(FORMAT))
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
