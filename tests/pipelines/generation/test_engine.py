"""Engine options of every command that runs episodes: what cannot work is refused before anything starts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pipelines.cli import main

BASE = ["--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--quiet"]


@pytest.mark.parametrize("extra, message", [
    (["--address", "127.0.0.1:6379"], "--address applies to --engine ray"),
    (["--cpus-per-episode", "2"], "--cpus-per-episode applies to --engine ray"),
    (["--engine", "ray", "--gpus-per-episode", "0.5"], "pass --device cuda"),
    (["--engine", "ray", "--cpus-per-episode", "0"], "--cpus-per-episode must be > 0"),
    (["--engine", "ray", "--gpus-per-episode", "-1"], "--gpus-per-episode must be >= 0"),
    (["--engine", "spark"], "invalid choice: 'spark'"),
])
def test_engine_options_that_cannot_work_are_one_line_exit_2_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    out = tmp_path / "pack"
    assert main(["generate", *BASE, "--episodes", "2", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_ray_missing_is_named_with_the_install_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pack"
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the extra is not installed
    assert main(["generate", *BASE, "--episodes", "2", "--engine", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--engine ray needs Ray" in err and "pip install 'esper-telemetry[ray]'" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_an_address_where_no_cluster_answers_fails_in_seconds_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray alone would retry such an address for many minutes."""
    out = tmp_path / "pack"
    assert main(["generate", *BASE, "--episodes", "2", "--engine", "ray", "--address", "127.0.0.1:1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
