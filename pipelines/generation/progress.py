"""A progress line for long runs: episodes done, rate and ETA, and what is running, on stderr.

On a terminal the line is redrawn in place; in a log file (overnight runs under nohup) it is printed
as whole lines, at most every `log_every` seconds, so the log stays readable. `status` adds what the
engine reports (live workers and nodes), `note` prints a line of its own without breaking the bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, done: int = 0, label: str = "episodes", stream: TextIO | None = None,
                 log_every: float = 30.0, status: Callable[[], str] | None = None) -> None:
        self.total, self.done, self.label = total, done, label
        self.status = status
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every = log_every
        self._start_done, self._start = done, time.monotonic()
        self._last_print = float("-inf")

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        new = self.done - self._start_done
        rate = new / elapsed if elapsed > 0 and new else 0.0
        eta = (self.total - self.done) / rate if rate else None
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] {self.done}/{self.total} {self.label} | {rate * 3600:.0f}/h | "
                f"elapsed {_clock(elapsed)} | ETA {'--' if eta is None else _clock(eta)}")
        return f"{line} | {self.status()}" if self.status else line

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line())
            self.stream.flush()
        elif now - self._last_print >= self.log_every or self.done == self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_print = now

    def note(self, text: str) -> None:
        """A line of its own (a failed episode...); on a terminal the bar is redrawn below it."""
        self.stream.write(("\r\033[K" if self.tty else "") + f"esper: {text}\n")
        if self.tty:
            self.stream.write(self.line())
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
