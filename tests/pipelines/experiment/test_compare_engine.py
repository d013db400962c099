"""`esper compare` runs its packs' episodes on the engine it is given, refusing options that cannot work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipelines.cli import main

RUN = ["compare", "--replicates", "2", "--episodes", "17", "--epochs", "3", "--eval-per-cause", "1", "--quiet"]


def test_an_engine_option_that_cannot_work_is_refused_before_anything_runs(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([*RUN, "--out", str(out), "--address", "127.0.0.1:6379"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--address applies to --engine ray" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_the_pack_is_generated_on_the_ray_cluster_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The training pack's generation goes to --address: there no cluster answers, so nothing is written."""
    out = tmp_path / "report"
    assert main([*RUN, "--out", str(out), "--engine", "ray", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in err, err
    assert not (out / "replicate-0" / "pack").exists()
