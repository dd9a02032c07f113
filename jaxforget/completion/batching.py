"""How many of the protocol's problems to solve at once: sized from XLA's compiled memory analysis.

A method's problems are solved by one compiled program that maps over them in batches
(``jax.lax.map(..., batch_size=b)``; ``b = None``: all at once, vmapped). :func:`plan_batch` compiles
the program for all problems at once and keeps it when XLA's memory analysis of it (arguments +
outputs + temporaries) fits the budget; otherwise it compiles a second, smaller batch, fits bytes =
fixed + b x per-problem through the two, and takes the largest batch that fits (halving while XLA says
it does not). Compiled programs are jax's own cache entries: the planned call does not compile again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["Batching", "default_budget", "plan_batch", "program_bytes"]

log = logging.getLogger(__name__)

BUDGET_SHARE = 0.5
"""The default budget's share of the memory free when the budget is set: the rest is left to the
arrays the caller holds (the matrix, predictions, metrics) and to everything else on the machine."""


def default_budget(device: Any | None = None) -> int:
    """Bytes a program may use by default: half the accelerator's memory limit, or on CPU half the
    memory the operating system reports available (``MemAvailable``; the physical memory if unknown)."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # CPU devices have no memory stats on some jaxlib builds
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(BUDGET_SHARE * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    return int(BUDGET_SHARE * _host_available())


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def program_bytes(compiled: Any) -> int:
    """Peak bytes of a compiled program by XLA's memory analysis: arguments + temporaries + outputs
    (less outputs aliased to arguments)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes
               + max(0, m.output_size_in_bytes - m.alias_size_in_bytes))


@dataclasses.dataclass(frozen=True)
class Batching:
    """The batch chosen for a method's ``problems``: ``batch`` problems at once (all of them when equal)."""

    problems: int
    batch: int
    bytes: int
    """XLA's estimate for the chosen program."""
    budget: int
    fits: bool
    compiles: int
    """Programs compiled to choose (the chosen one included)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        how = "all at once" if self.batch >= self.problems else f"{self.batch} at a time"
        return f"{self.problems} problems {how}, {self.bytes / 2**30:.2f} GiB (budget {self.budget / 2**30:.2f} GiB)"


def plan_batch(program_for: Callable[[int | None], Callable], args: tuple, problems: int,
               budget: int) -> Batching:
    """The largest batch whose program fits ``budget`` bytes; ``program_for(b)`` is the jitted program
    solving ``b`` problems at a time (``None``: all), ``args`` its arguments (arrays or shape structs)."""
    sizes: dict[int, int] = {}

    def measure(b: int) -> int:
        if b not in sizes:
            sizes[b] = program_bytes(program_for(None if b >= problems else b).lower(*args).compile())
        return sizes[b]

    def done(b: int) -> Batching:
        return Batching(problems, b, sizes[b], budget, sizes[b] <= budget, len(sizes))

    if measure(problems) <= budget or problems == 1:
        return done(problems)
    small = max(1, problems // 8)
    per = max(1.0, (sizes[problems] - measure(small)) / (problems - small))
    fixed = sizes[small] - small * per
    b = int(max(1, min(problems - 1, (budget - fixed) // per)))
    while measure(b) > budget and b > 1:
        b = max(1, b // 2)
    if sizes[b] > budget:
        log.warning("one problem at a time needs %.2f GiB, over the %.2f GiB budget", sizes[b] / 2**30,
                    budget / 2**30)
    return done(b)
