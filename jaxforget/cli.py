"""What every ``python -m jaxforget.<step>`` entry point shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import tyro

C = TypeVar("C")


def run(config_type: type[C], main: Callable[[C], Any], argv: list[str] | None = None, *,
        errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)) -> Any:
    """Parse ``config_type`` with tyro and call ``main(config)``. A user error (bad input, missing file)
    prints ``error: <message>`` to stderr and exits with status 2, without a traceback."""
    config = tyro.cli(config_type, args=argv)
    try:
        return main(config)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
