"""The user cache directory and atomically built cache entries.

Root: `$JAXFORGET_CACHE`, else `$XDG_CACHE_HOME/jaxforget`, else `~/.cache/jaxforget`. An entry is a
directory built under a temporary name beside its final path and renamed when complete, so a
half-built entry (a crash, two processes racing) is never mistaken for a finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("jaxforget.data")

COMPLETE = ".complete"
"""Marker file written last into a finished entry."""


def cache_root() -> Path:
    """Where jaxforget caches built worlds and base models."""
    if os.environ.get("JAXFORGET_CACHE"):
        return Path(os.environ["JAXFORGET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxforget"


def config_key(*parts: Any) -> str:
    """16 hex digits of sha256 over the JSON of the given dataclasses / plain values."""
    blob = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def build_once(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Return `path` if it is a complete entry, else run `build(tmp_dir)` and rename tmp_dir to `path`.

    If another process completes `path` first, its entry is kept and ours discarded. An incomplete
    directory at `path` (left by a crash) is replaced.
    """
    path = Path(path)
    if is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        build(tmp)
        (tmp / COMPLETE).write_text("")
        if path.exists() and not is_complete(path):
            log.warning("%s: replacing an incomplete cache entry", path)
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not is_complete(path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
