"""The library as a user gets it: a wheel built from the source tree and installed (not editable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from support import REPO

CHECK = """
import telemetry
from telemetry import DiagnosticTracker, load_config, open_pack
from telemetry.packs import query_library
assert telemetry.__file__.startswith({site!r}), telemetry.__file__
assert len(load_config("diagnostic").gradients.percentiles) == 5   # the packaged profiles YAML
assert "action_distribution" in query_library()                     # the packaged SQL library
assert DiagnosticTracker.__name__ and open_pack.__name__
import sys
assert "pipelines" not in sys.modules                                # the library alone
print(len(telemetry.__all__))
"""


def test_the_public_api_imports_from_a_regular_install(tmp_path: Path):
    source = tmp_path / "src"
    for name in ("telemetry", "pipelines", "schemas", "queries"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "dist")],
                   check=True, cwd=tmp_path, timeout=300)
    wheel = next((tmp_path / "dist").glob("esper_telemetry-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", CHECK.format(site=str(site))], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 20
