"""The pack I/O benchmark builds its data from the current steps table: when the table grows a
column, the benchmark must still run (it once stopped at a KeyError that no test saw). Nothing is
timed here; the run is tiny and only its shape is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pack_io_benchmark_runs_on_the_current_steps_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pack_io.py"), "--steps", "2400", "--json-rows", "480",
         "--reps", "1", "--chunk-episodes", "25", "--json", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tensors"]["shape"][0] == 2400
    assert result["write"]["writer_size_ratio"] < 1.5  # the writer's steps files hold the same rows
    assert set(result["duckdb"]["queries_ms"]) >= {"action_distribution", "best_action_by_cause"}
    assert result["json"]["rows"] == 480
