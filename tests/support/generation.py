"""Settings and readers shared by the engine tests: one small but complete run, and its pack's content."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pyarrow as pa

from support.processes import command_line
from telemetry import EsperError
from telemetry.packs import MANIFEST_NAME, read_manifest
from telemetry.packs.reader import open_pack

# Every column filled: the diagnostic profile, exploration, counterfactual rollouts on a quarter of the steps.
ARGS = ["--profile", "diagnostic", "--dataset", "synthetic", "--epochs", "4", "--seed", "13",
        "--counterfactual", "0.25", "--counterfactual-epochs", "2"]
EPISODES = 8


def content(pack: Path) -> tuple[pa.Table, pa.Table]:
    """Steps and episodes in a canonical order, so packs written in any order compare equal."""
    p = open_pack(pack)
    return (p.steps().sort_by([("episode_id", "ascending"), ("step", "ascending")]),
            p.episodes().sort_by([("episode_id", "ascending")]))


def ids(pack: Path) -> list[str]:
    return content(pack)[1].column("episode_id").to_pylist()


def differing_columns(got: pa.Table, want: pa.Table) -> list[str]:
    """Columns whose values differ (bit for bit, nulls included); both tables in the same order."""
    assert got.schema == want.schema and got.num_rows == want.num_rows, (got.schema, got.num_rows, want.num_rows)
    return [name for name in want.column_names if not got.column(name).equals(want.column(name))]


def only(table: pa.Table, keep: list[str]) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table.column("episode_id"), value_set=pa.array(keep, pa.string())))


def commit_of(pack: Path) -> int:
    try:
        return read_manifest(pack).commit
    except (EsperError, OSError, ValueError):  # not created yet, or caught between two commits' files
        return -1


def wait_for_commit(pack: Path, commit: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Until the pack's manifest reaches `commit`, while the run `proc` is alive."""
    deadline = time.monotonic() + timeout
    while not (pack / MANIFEST_NAME).exists() or commit_of(pack) < commit:
        assert proc.poll() is None, "the run ended before the commit awaited"
        assert time.monotonic() < deadline, f"no commit {commit} within {timeout} s"
        time.sleep(0.02)


def titled(pids: list[int], prefix: str) -> list[int]:
    return [p for p in pids if command_line(p).startswith(prefix)]
