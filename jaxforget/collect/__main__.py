"""``python -m jaxforget.collect``: parse the flags (no jax needed for that, or for ``--help``), then run."""

from __future__ import annotations

import sys

from jaxforget import collect as package  # its names load their modules on first use
from jaxforget.cli import parse
from jaxforget.collect.config import CollectConfig
from jaxforget.logs import configure_logging
from jaxforget.store import RunError


def cli(argv: list[str] | None = None) -> int:
    """The command: returns the exit status (2 for a user error, printed as one line; 1 when a task failed)."""
    config, verbose = parse(CollectConfig, argv, prog="python -m jaxforget.collect")
    return execute(config, verbose)


def execute(config: CollectConfig, verbose: bool = False) -> int:
    """Collect with parsed flags: the exit status (2 for a user error, printed as one line)."""
    try:
        configure_logging(verbose, quiet=config.quiet)
        return package.collect(config)  # loads jax and the engine: after the flags are parsed
    except (ValueError, FileNotFoundError, RunError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
