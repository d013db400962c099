"""The exclusive writer lock of a pack.

Two writers appending to one pack would each write a manifest listing only their own files, and the
second replace would silently drop the first writer's commits. The lock is an advisory `flock` on
`PACK/.writer.lock`; the file also records who holds it, for the error message. The kernel drops a
flock when its holder dies, so a lock file left behind by a crashed writer (its PID dead) is stale by
construction and the next writer takes it over without anyone deleting it by hand.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from telemetry.errors import PackError

LOCK_NAME = ".writer.lock"


class WriterLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    @classmethod
    def acquire(cls, pack: Path) -> WriterLock:
        path = pack / LOCK_NAME
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise PackError(f"{pack}: another writer holds the pack ({_describe_holder(path)}); "
                                "wait for it to close") from None
            if _same_file(fd, path):
                _record_holder(fd)
                return cls(path, fd)
            os.close(fd)  # the previous holder released (and removed) the file between open and flock
        raise PackError(f"{pack}: could not take the writer lock {path} (it keeps being replaced)")

    def release(self) -> None:
        """Remove the file while still holding it, so a waiting opener sees a new file and retries."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        finally:
            os.close(self.fd)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _record_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"lock file {path}"
