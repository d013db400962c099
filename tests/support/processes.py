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


def group_members(pgid: int) -> list[str]:
    """Live (non-zombie) processes of a process group, as 'pid name'."""
    alive = []
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat and int(stat[1][2]) == pgid and stat[1][0] != "Z":
            alive.append(f"{entry.name} {stat[0]}")
    return alive


def session_members(sid: int) -> list[str]:
    """Live (non-zombie) processes of a session (Ray puts its workers in process groups of their own)."""
    alive = []
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat and int(stat[1][3]) == sid and stat[1][0] != "Z":
            alive.append(f"{entry.name} {stat[0]}")
    return alive


def wait_group_gone(pgid: int, timeout: float) -> list[str]:
    """Members still alive after waiting up to `timeout` s for the group to empty."""
    deadline = time.monotonic() + timeout
    while (alive := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def children(pid: int) -> list[int]:
    """Live children of `pid`."""
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat and int(stat[1][1]) == pid and stat[1][0] != "Z":
            out.append(int(entry.name))
    return out


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
