"""Advisory file locks (``flock``) that say who holds them: the run directory's guard against two
processes doing the same work.

A lock is an open file description with ``flock`` on it, so it is released when the holder closes it,
exits or is killed (the kernel drops it with the process: a lock is never stale after its holder
died). The holder writes its pid, host, start time and command line into the file, which is what a
refused process reports. Locks conflict between processes and between two :class:`FileLock` objects
of one process alike (each opens the file anew).

Shared filesystems: on Linux, NFS clients implement ``flock`` with NFS byte-range locks (since
kernel 2.6.12), so the lock holds across hosts when the server supports locking (NFSv4, or NFSv3 with
lockd); a host that crashes keeps its locks until the server's lease expires (NFSv4: 90 s by
default). A filesystem mounted without locking (NFS ``nolock``, Lustre without ``-o flock``, some
FUSE filesystems) makes locks local to each host or refuses them; the refusal is logged as a warning
and the work goes on unguarded (:class:`FileLock` then holds nothing).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

log = logging.getLogger("jaxforget.locks")

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_warned: set[Path] = set()  # directories whose filesystem refused a lock (said once each)


class LockHeld(RuntimeError):
    """Another process holds the lock; ``holder`` describes it (pid, host, since, command) when it said."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path}: held by {holder}")
        self.path, self.holder = path, holder


def holder_text(path: Path) -> str:
    """Who holds (or last held) the lock file `path`, in words."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    command = f", `{info['command']}`" if info.get("command") else ""
    return f"pid {info['pid']} on {info.get('host', '?')} since {since}{command}"


class FileLock:
    """``flock`` on `path` (created with its parent directories): exclusive, or shared with other shared
    holders. Use as a context manager or call :meth:`acquire` / :meth:`release`."""

    def __init__(self, path: str | os.PathLike, *, shared: bool = False):
        self.path, self.shared = Path(path), shared
        self._fd: int | None = None
        self.unsupported = False  # the filesystem refused locking: nothing is held

    @property
    def held(self) -> bool:
        return self._fd is not None or self.unsupported

    def acquire(self, *, blocking: bool = False) -> bool:
        """Take the lock; False when another process holds it (never with `blocking`, which waits)."""
        if self.held:
            raise RuntimeError(f"{self.path}: lock already acquired by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            if e.errno in _UNSUPPORTED:
                if self.path.parent not in _warned:
                    _warned.add(self.path.parent)
                    log.warning("%s: this filesystem does not support file locks (%s); concurrent processes on "
                                "this run directory are not detected", self.path, os.strerror(e.errno))
                self.unsupported = True
                return True
            raise
        self._fd = fd
        # say who holds it (of several shared holders, the last one to arrive)
        info = dict(pid=os.getpid(), host=socket.gethostname(), since=time.time(),
                    command=" ".join(sys.orig_argv)[:300])
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return True

    def acquire_or_raise(self) -> None:
        """:meth:`acquire` without waiting; :class:`LockHeld` naming the holder when another process has it."""
        if not self.acquire():
            raise LockHeld(self.path, holder_text(self.path))

    def release(self, *, unlink: bool = False) -> None:
        """Let go of the lock; `unlink` also removes the file first. Only for a lock whose purpose is over
        for good (its task's row is written): a process that opened the old file may still lock it, and one
        that comes later locks a new file, so both must re-check that purpose after locking."""
        if self._fd is not None:
            if unlink:
                self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None
        self.unsupported = False

    def __enter__(self) -> FileLock:
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()
