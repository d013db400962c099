"""The one guard every `esper` command runs under (telemetry.cli.run): bad input is one line and exit 2,
a bug is one line naming the command and exit 1 (the traceback only with --debug), Ctrl-C and SIGTERM
say "interrupted" after the command's clean-up ran, and every message stays on one line."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.packs import make_episodes, write_pack

from telemetry.cli import EXIT_TERMINATED, Registrar, run
from telemetry.errors import EsperError

CLEANED: list[str] = []


def commands(action) -> Registrar:
    """A registrar with one command, `act`, whose body is `action()`."""

    def cmd(args: argparse.Namespace) -> int:
        try:
            return action()
        finally:
            CLEANED.append("cleaned up")

    def register(sub: argparse._SubParsersAction) -> None:
        sub.add_parser("act").set_defaults(func=cmd)

    return register


def esper(capsys: pytest.CaptureFixture[str], action, *argv: str) -> tuple[int, str, str]:
    CLEANED.clear()
    code = run([*argv, "act"] if argv else ["act"], [commands(action)])
    out, err = capsys.readouterr()
    return code, out, err


def boom() -> int:
    raise RuntimeError("the index was\nout of range")


def test_a_bug_is_one_line_naming_the_command_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = esper(capsys, boom)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err == ("esper: error: act: internal error (RuntimeError: the index was out of range); "
                   "`esper --debug ...` prints the traceback\n")
    assert CLEANED == ["cleaned up"]


def test_debug_adds_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = esper(capsys, boom, "--debug")
    assert code == 1
    assert err.startswith("esper: error: act: internal error (RuntimeError: the index was out of range)\n")
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("the index was' in err


def test_recursion_and_memory_errors_are_bugs_too(capsys: pytest.CaptureFixture[str]) -> None:
    def recurse() -> int:
        return recurse()

    code, _, err = esper(capsys, recurse)
    assert code == 1 and err.count("\n") == 1 and "internal error (RecursionError" in err


def test_bad_input_keeps_exit_2_and_a_message_with_a_newline_stays_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def bad() -> int:
        raise EsperError("pack\nfolder: not a pack")

    code, _, err = esper(capsys, bad)
    assert (code, err) == (2, "esper: error: pack\\nfolder: not a pack\n")


@pytest.mark.parametrize("brk", ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_every_line_break_python_knows_stays_inside_the_one_line(capsys: pytest.CaptureFixture[str],
                                                                 brk: str) -> None:
    """Found by the long CLI fuzz run: an unrecognised argument '\\x0c\\x0c\\x85' made a 4-line message."""
    def bad() -> int:
        raise EsperError(f"unrecognized arguments: a{brk}b")

    code, _, err = esper(capsys, bad)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("esper: error: unrecognized arguments: a\\")


def test_sigterm_interrupts_like_ctrl_c_after_clean_up(capsys: pytest.CaptureFixture[str]) -> None:
    def terminated() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        return 0

    before = signal.getsignal(signal.SIGTERM)
    code, _, err = esper(capsys, terminated)
    assert (code, err) == (EXIT_TERMINATED, "esper: interrupted (SIGTERM)\n") and EXIT_TERMINATED == 143
    assert CLEANED == ["cleaned up"]
    assert signal.getsignal(signal.SIGTERM) is before  # restored for whoever called run()


def test_ctrl_c_is_exit_130(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert esper(capsys, interrupted)[:3:2] == (130, "esper: interrupted\n")


def test_an_empty_path_is_refused_by_every_path_option(capsys: pytest.CaptureFixture[str]) -> None:
    from telemetry.cli import main

    for argv in (["inspect", ""], ["query", " ", "SELECT 1"], ["validate", ""]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "argument PACK: expected a path, got" in err, err


def test_a_path_that_is_not_utf8_prints_as_its_bytes(tmp_path: Path) -> None:
    """`esper inspect` of a pack in a folder whose name is not UTF-8 prints that name, not a traceback."""
    write_pack(tmp_path / "pack", make_episodes(0, 1, steps=2, profile="minimal"), profile="minimal")
    folder = os.fsencode(tmp_path) + b"/pack-\xff"
    os.rename(tmp_path / "pack", folder)  # packs move freely: every link inside is relative
    done = subprocess.run([sys.executable, "-m", "telemetry.cli", "inspect", folder], capture_output=True,
                          timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr
    assert b"pack-\xff" in done.stdout and b"Traceback" not in done.stderr
