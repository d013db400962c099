"""`esper`'s pack commands start without the pipelines: no torch, no training stack, no scipy, and the
same answers and errors as when every command is registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO
from support.packs import make_episodes, write_pack

# Runs one command in a fresh interpreter and prints, after its output, which heavy modules it imported.
PROBE = """
import json, sys
from pipelines.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "imported": sorted(m for m in ("torch", "scipy", "pipelines.training.train")
                                                    if m in sys.modules)}))
"""


def _run(*argv: str) -> tuple[dict[str, object], str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    *lines, last = done.stdout.splitlines()
    return json.loads(last), "\n".join(lines), done.stderr


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("startup") / "pack"
    write_pack(path, make_episodes(0, 3, steps=2, profile="minimal"), profile="minimal")
    return path


def test_pack_commands_import_neither_torch_nor_the_training_stack(pack: Path) -> None:
    for argv in (["validate", str(pack)], ["--debug", "inspect", str(pack)],
                 ["query", str(pack), "SELECT count(*) AS n FROM steps"]):
        result, out, err = _run(*argv)
        assert result == {"code": 0, "imported": []}, (argv, result, err)
    assert "6" in out.split(), out  # 3 episodes of 2 steps, answered by DuckDB


def test_a_pack_commands_bad_input_is_the_same_one_line(pack: Path) -> None:
    result, out, err = _run("validate", str(pack / "nowhere"))
    assert result["code"] == 2 and out == "" and err.startswith("esper: error: ") and err.count("\n") == 1, err


def test_the_command_list_still_names_every_command() -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("generate", "train", "compare", "profiles", "validate", "query", "explain", "report"):
        assert f"    {command}" in done.stdout, (command, done.stdout)
