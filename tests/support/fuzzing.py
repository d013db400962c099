"""Shared by the fuzz tests: running `esper` in-process as a user would, the invariant every example
must keep, hostile values, and the sizes of the default and long runs.

The invariant (README, "Reliability"): whatever the input, a command exits 0 or 2 (`esper validate`
also 1, its "problems found", with the problems on stdout and nothing on stderr), prints at most 3
lines on stderr and never a traceback or an internal error, writes no file outside the output it
was named, and leaves every pack that read before reading the same.

Sizes: the default suite keeps each fuzz test to a few dozen examples (a few hundred in all, a
minute or two on 2 cores); `pytest --hypothesis-profile=long` (registered in tests/conftest.py)
multiplies each by LONG_FACTOR.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

LONG_PROFILE = "long"
LONG_FACTOR = 20


def long_run() -> bool:
    return settings.get_current_profile_name() == LONG_PROFILE


def fuzz_settings(examples: int) -> settings:
    """`examples` in the default run, LONG_FACTOR times as many under --hypothesis-profile=long.

    The default run draws the same examples every time, so the suite's verdict depends on the code
    alone; the long run draws new ones each time, to find what the fixed set misses."""
    return settings(max_examples=examples * (LONG_FACTOR if long_run() else 1), deadline=None,
                    derandomize=not long_run(),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


# ---- running a command ---------------------------------------------------------------------------

class ExampleTimeout(BaseException):
    """An example ran past its time limit: a hang is a failure, not a stuck suite."""


@dataclass
class Outcome:
    argv: list[str]
    code: int
    out: bytes
    err: str

    def __str__(self) -> str:
        argv = " ".join(repr(a if len(a) < 200 else a[:200] + "...") for a in self.argv)
        return f"esper {argv} -> {self.code}\nstderr: {self.err!r}\nstdout: {self.out[:300]!r}"


@contextmanager
def time_limit(seconds: float):
    def expire(signum: int, frame: object) -> None:
        raise ExampleTimeout(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_esper(main: Callable[[list[str]], int], argv: Sequence[str], cwd: Path, seconds: float = 120) -> Outcome:
    """`main(argv)` in `cwd`, stdout and stderr captured as a terminal would receive them (bytes, UTF-8)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with time_limit(seconds):
            code = main(list(argv))
    finally:
        os.chdir(here)
        sys.stdout, sys.stderr = streams
    out.flush()
    err.flush()
    return Outcome(list(argv), code, out.buffer.getvalue(), err.buffer.getvalue().decode("utf-8", "replace"))


def check_outcome(outcome: Outcome, validate: bool = False) -> None:
    """The per-example invariant on what the user sees."""
    assert "Traceback" not in outcome.err and b"Traceback" not in outcome.out, str(outcome)
    assert "internal error" not in outcome.err, str(outcome)
    lines = outcome.err.splitlines()
    assert len(lines) <= 3, str(outcome)
    if validate and outcome.code == 1:  # `esper validate`: problems found, listed on stdout
        assert outcome.out and not outcome.err, str(outcome)
        return
    assert outcome.code in (0, 2), str(outcome)
    if outcome.code == 2:
        assert lines and lines[0].startswith("esper: error: "), str(outcome)


# ---- what must not change ------------------------------------------------------------------------

def tree(root: Path, skip: Sequence[Path] = ()) -> dict[str, str]:
    """Every path under `root` (links not followed) with a digest of its bytes, its link target, or 'dir';
    paths under any of `skip` (a command's named output) are left out."""
    skipped = [os.path.abspath(p) for p in skip]
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            if any(path == s or path.startswith(s + os.sep) for s in skipped):
                continue
            if os.path.islink(path):
                found[path] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[path] = "dir"
            else:
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


# ---- hostile values --------------------------------------------------------------------------------

HOSTILE_TEXT = ["", " ", "\t", "-", "--", "nan", "NaN", "inf", "-inf", "None", "null", "true", "[]", "{}", "é",
                "données", "日本語", "🙂", "\u202e", "a\nb", "x" * 300, "%s%n", "'; DROP TABLE steps; --",
                "\udcff", "../..", "."]
HOSTILE_INT = ["0", "-1", "-0", "1", "2", "007", "1e3", "1.5", "nan", "inf", "", " 2 ", "0x10", "1_0", "٣",
               "99999999999999999999999", "-99999999999999999999999", "2147483648", "²", "abc"]
HOSTILE_FLOAT = ["0", "-0.0", "-1", "0.5", "1", "1.0000001", "nan", "-nan", "inf", "-inf", "1e309", "-1e309",
                 "1e-320", "", "0x1p3", "1,5", "abc", "99999999999999999999999"]


def hostile_int(work: bool = False) -> st.SearchStrategy[str]:
    """Integers as argv text. A `work` option sets how long a command runs (episodes, epochs, workers...):
    only refused or small values, so a valid draw stays cheap (asking for a billion episodes is a
    valid request, not a fuzz finding)."""
    if work:
        return st.sampled_from([v for v in HOSTILE_INT if _small_or_invalid(v)])
    return st.one_of(st.sampled_from(HOSTILE_INT), st.integers(-(2 ** 70), 2 ** 70).map(str))


def _small_or_invalid(text: str) -> bool:
    try:
        return int(text) <= 3
    except ValueError:
        return True


def hostile_float() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_FLOAT),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr))


def hostile_text(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([*valid, *HOSTILE_TEXT]) if valid else st.sampled_from(HOSTILE_TEXT),
                     st.text(max_size=20).filter(lambda t: "\x00" not in t))


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value a hand edit could put in a field, hostile ones included."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 80), 2 ** 80), st.floats(allow_nan=True),
                        st.text(max_size=30), st.sampled_from(["", "..", "/etc/passwd", "x" * 5000, "\udcff"]))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)
