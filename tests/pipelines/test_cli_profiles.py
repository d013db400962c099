"""`esper profiles` through the installed console script, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import REPO

ESPER = shutil.which("esper", path=str(Path(sys.executable).parent)) or "esper"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ESPER, *args], capture_output=True, text=True, timeout=120)


def test_list_shows_every_profile_with_feature_counts():
    out = run("profiles", "list")
    assert out.returncode == 0, out.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.stdout.splitlines()}
    assert list(counts) == ["minimal", "standard", "diagnostic", "research"]
    assert counts["minimal"] == 27 + 14  # the base block and the lifecycle group
    assert counts["minimal"] < counts["standard"] < counts["diagnostic"] < counts["research"]


def test_show_json_is_config_plus_ordered_features():
    out = run("profiles", "show", "standard", "--set", "history_length=30", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["config"]["history_length"] == 30
    names = [f["name"] for f in doc["features"]]
    assert names[0] == "epoch" and names[26] == "available_slots"
    assert "val_loss_lag29" in names
    assert {"name", "group", "dtype", "unit", "description"} <= set(doc["features"][0])


def test_show_text_reports_group_counts(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("per_class:\n  enabled: true\n")
    out = run("profiles", "show", "standard", "--config", str(f))
    assert out.returncode == 0, out.stderr
    assert "per_class" in out.stdout and "features for the reference host" in out.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("profiles", "show", "huge"), "unknown profile 'huge'"),
        (("profiles", "show", "standard", "--set", "gradients.track_nrom=true"), "did you mean 'gradients.track_norm'"),
        (("profiles", "show", "standard", "--set", "history_length=2"), "expected >= 5"),
        (("profiles", "show", "standard", "--set", "gradients.layers=[conv7]"), "nearest: conv"),
        (("profiles", "show", "standard", "--config", "/nonexistent.yaml"), "config file not found"),
        (("profiles", "frobnicate"), "invalid choice"),
        (("nosuchcommand",), "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle):
    out = run(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_regular_install_carries_profiles(tmp_path):
    """A non-editable install must find the profiles: they travel inside the wheel."""
    root = REPO
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(root),
         "-w", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("esper_telemetry-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "telemetry/schemas/telemetry_profiles.yaml" in names
    assert any(n.startswith("telemetry/queries/") and n.endswith(".sql") for n in names) or not list(
        (root / "queries").glob("*.sql"))
    assert "pipelines/environment/host.py" in names
