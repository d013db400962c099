"""Processes of a run under test, read from /proc (Linux): who is alive, who is whose child."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _stat(pid: str) -> tuple[str, list[str]] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# fields of /proc/PID/stat after the name: state, ppid, pgrp, session
_PARENT, _GROUP, _SESSION = 1, 2, 3


def _live(field: int, value: int) -> list[tuple[str, str]]:
    """(pid, name) of every live (non-zombie) process whose stat `field` equals `value`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat and int(stat[1][field]) == value and stat[1][0] != "Z":
            found.append((entry.name, stat[0]))
    return found


def group_members(pgid: int) -> list[str]:
    """Live (non-zombie) processes of a process group, as 'pid name'."""
    return [f"{pid} {name}" for pid, name in _live(_GROUP, pgid)]


def session_members(sid: int) -> list[str]:
    """Live (non-zombie) processes of a session (Ray puts its workers in process groups of their own)."""
    return [f"{pid} {name}" for pid, name in _live(_SESSION, sid)]


def wait_group_gone(pgid: int, timeout: float) -> list[str]:
    """Members still alive after waiting up to `timeout` s for the group to empty."""
    deadline = time.monotonic() + timeout
    while (alive := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def children(pid: int) -> list[int]:
    """Live children of `pid`."""
    return [int(child) for child, _ in _live(_PARENT, pid)]


def descendants_titled(pid: int, prefix: str) -> list[int]:
    """Children of `pid` whose command line starts with `prefix` (Ray names its workers 'ray::...')."""
    return [c for c in children(pid) if _cmdline(str(c)).startswith(prefix)]


def command_line(pid: int) -> str:
    return _cmdline(str(pid))


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
