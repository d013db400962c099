"""Fault injection: `esper generate` is SIGKILLed at many points, and after each kill

1. the pack reads as its last commit: the project reader, and pyarrow, polars and DuckDB given the
   manifest's file list, all return exactly the episodes the manifest committed, each whole and
   identical to an uninterrupted run's;
2. a bare-glob read (`read_parquet('PACK/steps/**/*.parquet')`, polars, pyarrow.dataset) works and
   returns exactly that commit: no file of the interrupted commit is in the table folders;
3. `esper validate` passes;
4. `esper generate --resume` completes the pack to exactly N episodes, none duplicated or lost, equal
   to the uninterrupted run, with no leftovers and every reader (bare globs included) agreeing.

Kill points: every stage of the commit protocol at several occurrences (per-episode commits and the
compaction at close), via the ESPER_FAULT_KILL hook of `telemetry.packs.faults.checkpoint`; the window between
taking the lock of a new pack and publishing its first manifest; and random moments drawn from a fixed-seed RNG,
with one worker and with two (the whole process group is killed, and no process may survive).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from support import REPO

from pipelines.cli import main
from pipelines.generation.episode import episode_id
from telemetry.packs import faults
from telemetry.packs.card import CARD_NAME, GUARD_NAME
from telemetry.packs.lock import LOCK_NAME
from telemetry.packs.manifest import MANIFEST_NAME, TABLES, read_manifest
from telemetry.packs.reader import open_pack

ROOT = REPO
ESPER = [sys.executable, "-m", "pipelines.cli"]
# As small as generation gets: every kill costs one Python + torch start-up.
ARGS = ["--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--seed", "11",
        "--counterfactual", "0", "--quiet"]
EPISODES = 5
STEPS_PER_EPISODE = 2  # epochs - 1 decisions
# Columns compared between readers, as plain rows (a project reader and DuckDB differ in Arrow types).
COLUMNS = {"steps": ["episode_id", "step", "split", "action", "reward", "val_loss"],
           "episodes": ["episode_id", "episode_index", "split", "scenario", "final_accuracy"]}
# what a kill inside PackWriter.create can leave: the lock, the links (dangling until `current` exists), an
# unpublished version folder and a link being renamed into place
CREATE_LEFTOVERS = {LOCK_NAME, MANIFEST_NAME, CARD_NAME, GUARD_NAME, *TABLES, ".versions", ".tmp-current"}

# (stage:occurrence, workers); "last" is resolved against the reference run's stages (the compaction).
# Every stage of the protocol at the first commit and at the closing compaction, and one mid-run
# commit with two workers; the other mid-run occurrences repeat the first commit's code path.
HOOK_KILLS = [
    ("staged:1", 1), ("linked:1", 1), ("renamed:1", 1), ("manifest_staged:1", 1), ("manifest_replaced:1", 1),
    ("manifest_replaced:2", 2), ("staged:last", 1), ("linked:last", 1), ("renamed:last", 1),
    ("manifest_staged:last", 1), ("manifest_replaced:last", 1), ("old_deleted:1", 1), ("old_deleted:last", 1),
]


def _draw_random_kills(seed: int, count: int) -> list[tuple[int, int, float]]:
    """(workers, after, wait). after 0: kill `wait` s after the start (during start-up, before any pack
    exists); else `wait` of an episode's time after the after-th commit, with at least two episodes
    still to go, so the kill lands mid-run on any machine speed."""
    rng = random.Random(seed)
    kills = []
    for i in range(count):
        workers = 2 if i % 3 == 1 else 1
        if i < 2:
            kills.append((workers, 0, round(rng.uniform(0.5, 3.0), 3)))
        else:  # commit 1 may include one-off warm-up; with two workers two episodes may be in flight
            kills.append((workers, rng.randint(2, EPISODES - 2 if workers == 1 else 2), round(rng.random(), 3)))
    return kills


RANDOM_KILLS = _draw_random_kills(seed=20_240_611, count=6)


# ---- the uninterrupted run -----------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    path: Path
    stages: list[str]  # every _checkpoint stage of the run, in order
    steps: pa.Table
    episodes: pa.Table

    def kill_index(self, point: str) -> int:
        """Where in `stages` the kill "stage:n" (or "stage:last") lands."""
        stage, n = point.split(":")
        at = [i for i, s in enumerate(self.stages) if s == stage]
        return at[-1] if n == "last" else at[int(n) - 1]

    def hook(self, point: str) -> str:
        stage, n = point.split(":")
        return f"{stage}:{self.stages.count(stage) if n == 'last' else n}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted run, with the commit-protocol stages it passes through recorded."""
    out = tmp_path_factory.mktemp("reliability") / "ref"
    stages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(faults, "checkpoint", stages.append)
        assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out), "--workers", "1"]) == 0
    commits = [i for i, s in enumerate(stages) if s == "manifest_replaced"]
    assert len(commits) == EPISODES + 1, "one commit per episode, then the compaction at close"
    assert "old_deleted" in stages[commits[-2]:], "the compaction at close must supersede small files"
    steps, episodes = _content(out)
    assert episodes.column("episode_id").to_pylist() == [episode_id(i) for i in range(EPISODES)]
    assert steps.num_rows == EPISODES * STEPS_PER_EPISODE
    return Reference(out, stages, steps, episodes)


# ---- kills ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("point", "workers"), HOOK_KILLS, ids=[f"{p}-w{w}" for p, w in HOOK_KILLS])
def test_kill_inside_the_commit_protocol(reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         point: str, workers: int) -> None:
    """A kill at an exact step of the commit protocol leaves exactly the commits completed before it."""
    out = tmp_path / "pack"
    proc = _spawn(out, workers, tmp_path, env={"ESPER_FAULT_KILL": reference.hook(point)})
    _wait_for_death(proc, tmp_path)
    commits = reference.stages[:reference.kill_index(point) + 1].count("manifest_replaced")
    _check_killed(out, reference, capsys, commits=commits, in_order=workers == 1)
    _check_resume(out, reference, capsys)


@pytest.mark.parametrize("where", ["before_the_first_manifest", "first_manifest_staged"])
def test_kill_while_creating_the_pack(reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      where: str) -> None:
    """Killed after taking the new pack's lock but before publishing its first manifest: --resume starts it
    afresh."""
    stage = "manifest_staged" if where == "first_manifest_staged" else None
    script = (
        "import os, signal, sys\n"
        "from telemetry.packs import commit\n"
        "from pipelines.cli import main\n"
        "publish = commit.publish\n"
        "def die(stage=None):\n"
        f"    if stage == {stage!r}: os.kill(os.getpid(), signal.SIGKILL)\n"
        "commit.publish = lambda root, manifest, checkpoint=None: (die(), publish(root, manifest, die))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = _spawn(out := tmp_path / "pack", 1, tmp_path, script=script)
    _wait_for_death(proc, tmp_path)
    assert out.is_dir() and not (out / MANIFEST_NAME).exists()
    _check_killed(out, reference, capsys, commits=None, in_order=True)
    _check_resume(out, reference, capsys)


@pytest.mark.parametrize(("workers", "after", "wait"), RANDOM_KILLS,
                         ids=[f"w{w}-after{a}-{x}{'s' if a == 0 else 'ep'}" for w, a, x in RANDOM_KILLS])
def test_kill_at_a_random_moment(reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 workers: int, after: int, wait: float) -> None:
    """SIGKILL of the whole process group (workers included) at a drawn moment of start-up or mid-run."""
    out = tmp_path / "pack"
    proc = _spawn(out, workers, tmp_path)
    if after == 0:
        time.sleep(wait)
    else:
        previous = _wait_for_commit(proc, out, after - 1)
        time.sleep(wait * (_wait_for_commit(proc, out, after) - previous))
    assert proc.poll() is None, f"the run ended before it was killed ({_stderr(tmp_path)})"
    _kill_group(proc)
    _check_killed(out, reference, capsys, commits=None, in_order=workers == 1)
    _check_resume(out, reference, capsys)


def test_a_bare_glob_reads_as_the_last_commit_after_a_kill_mid_commit(reference: Reference, tmp_path: Path) -> None:
    """The requirement read literally for plain tools using the README's glob, right after a kill that
    falls between an episode's file renames and the manifest replace."""
    out = tmp_path / "pack"
    proc = _spawn(out, 1, tmp_path, env={"ESPER_FAULT_KILL": "manifest_staged:3"})
    _wait_for_death(proc, tmp_path)
    steps, episodes = _content(out)
    for table, committed in (("steps", steps), ("episodes", episodes)):
        assert _glob_rows(out, table) == dict.fromkeys(("pyarrow", "polars", "duckdb"), _rows(committed, table))


# ---- after a kill --------------------------------------------------------------------------------

def _check_killed(out: Path, ref: Reference, capsys: pytest.CaptureFixture[str], *, commits: int | None,
                  in_order: bool) -> None:
    """The pack is its last commit through every reader, bare globs included; validate passes."""
    if not (out / MANIFEST_NAME).exists():
        assert commits is None, "a manifest was committed before the kill"
        assert not out.exists() or {p.name for p in out.iterdir()} <= CREATE_LEFTOVERS
        return
    pack = open_pack(out)
    steps, episodes = _content(out)
    ids = episodes.column("episode_id").to_pylist()
    if commits is not None:
        assert pack.manifest.commit == commits
        assert len(ids) == min(commits, EPISODES)
    else:  # one commit per episode, and one more once the close has compacted them
        assert pack.manifest.commit == len(ids) or pack.manifest.commit == len(ids) + 1 == EPISODES + 1
    assert len(set(ids)) == len(ids) and set(ids) <= set(_ids(ref.episodes))
    if in_order:  # one worker finishes episodes in order
        assert ids == [episode_id(i) for i in range(len(ids))]
    assert Counter(steps.column("episode_id").to_pylist()) == dict.fromkeys(ids, STEPS_PER_EPISODE)
    assert steps.equals(_only(ref.steps, ids)) and episodes.equals(_only(ref.episodes, ids))
    assert (pack.manifest.quick_stats.episodes, pack.manifest.quick_stats.steps) == (len(ids), steps.num_rows)

    assert _unlisted(out) == {"steps": [], "episodes": []}
    for table, committed in (("steps", steps), ("episodes", episodes)):
        want = _rows(committed, table)
        files = [out / f.path for f in pack.manifest.files_of(table)]
        assert _listed_rows(files, table) == dict.fromkeys(("pyarrow", "polars", "duckdb"), want)
        assert _glob_rows(out, table) == dict.fromkeys(("pyarrow", "polars", "duckdb"), want), table

    capsys.readouterr()
    code = main(["validate", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0, printed


def _check_resume(out: Path, ref: Reference, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume finishes exactly the uninterrupted pack, sound and free of leftovers."""
    assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out), "--resume"]) == 0, \
        capsys.readouterr().err
    steps, episodes = _content(out)
    assert episodes.column("episode_index").to_pylist() == list(range(EPISODES))
    assert steps.equals(ref.steps) and episodes.equals(ref.episodes)
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0, capsys.readouterr().out
    assert _unlisted(out) == {"steps": [], "episodes": []}
    assert sorted(p.name for p in out.iterdir()) == sorted([".versions", "current", "episodes", MANIFEST_NAME, "steps",
                                                            CARD_NAME, GUARD_NAME])
    assert [p.name for p in (out / ".versions").iterdir()] == [f"{read_manifest(out).commit:06d}"]
    for table, committed in (("steps", steps), ("episodes", episodes)):
        assert _glob_rows(out, table) == dict.fromkeys(("pyarrow", "polars", "duckdb"), _rows(committed, table))


# ---- processes -----------------------------------------------------------------------------------

def _spawn(out: Path, workers: int, logs: Path, env: dict[str, str] | None = None,
           script: str | None = None) -> subprocess.Popen[bytes]:
    """`esper generate` in a new session, so its workers share its process group."""
    head = [sys.executable, "-c", script] if script else ESPER
    cmd = [*head, "generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out), "--workers", str(workers)]
    with open(logs / "stderr.txt", "wb") as err:
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)


def _wait_for_death(proc: subprocess.Popen[bytes], logs: Path) -> None:
    """The run killed itself at its fault point; its workers must not outlive it."""
    try:
        proc.wait(timeout=180)
    finally:
        if proc.returncode is None:
            _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, not killed: {_stderr(logs)}"
    survivors = _group_members(proc.pid, wait=10.0)
    _kill_group(proc)
    assert not survivors, f"processes of the killed run still alive: {survivors}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    assert not _group_members(proc.pid, wait=10.0), "a process survived SIGKILL of its group"


def _group_members(pgid: int, wait: float) -> list[str]:
    """Live (non-zombie) processes of a process group, after waiting up to `wait` s for them to go."""
    deadline = time.monotonic() + wait
    while True:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(f"{stat.parent.name} {text[text.index('(') + 1:text.rindex(')')]}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _wait_for_commit(proc: subprocess.Popen[bytes], out: Path, commit: int) -> float:
    """Poll (cheaply: the run goes on meanwhile) until the manifest reaches `commit`; when it did."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads((out / MANIFEST_NAME).read_bytes())["commit"] >= commit:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    return time.monotonic()


def _stderr(logs: Path) -> str:
    return (logs / "stderr.txt").read_text(errors="replace")[-2000:]


# ---- reading -------------------------------------------------------------------------------------

def _content(pack: Path) -> tuple[pa.Table, pa.Table]:
    """Both tables through the project reader, in a canonical order."""
    p = open_pack(pack)
    return (p.steps().sort_by([("episode_id", "ascending"), ("step", "ascending")]),
            p.episodes().sort_by([("episode_id", "ascending")]))


def _ids(table: pa.Table) -> list[str]:
    return table.column("episode_id").to_pylist()


def _only(table: pa.Table, ids: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column("episode_id"), value_set=pa.array(ids, pa.string())))


def _rows(table: pa.Table, name: str) -> list[tuple]:
    columns = COLUMNS[name]
    return sorted(tuple(r[c] for c in columns) for r in table.select(columns).to_pylist())


def _unlisted(out: Path) -> dict[str, list[Path]]:
    """Parquet files in the table folders that the manifest does not list (an interrupted write's)."""
    listed = {f.path for f in read_manifest(out).files}
    return {t: sorted(p for p in (out / t).rglob("*.parquet") if p.relative_to(out).as_posix() not in listed)
            for t in TABLES}


def _listed_rows(files: list[Path], table: str) -> dict[str, list[tuple]]:
    """The manifest's files read by plain pyarrow, polars and DuckDB (hive partitioning gives `split`)."""
    columns = COLUMNS[table]
    if not files:
        return dict.fromkeys(("pyarrow", "polars", "duckdb"), [])
    paths = [str(f) for f in files]
    arrow = ds.dataset(paths, format="parquet", partitioning="hive",
                       partition_base_dir=str(files[0].parents[1])).to_table(columns=columns)
    frame = pl.scan_parquet(paths, hive_partitioning=True).select(columns).collect()
    listing = "[" + ", ".join(_sql_string(p) for p in paths) + "]"
    duck = duckdb.connect().sql(f"SELECT {', '.join(columns)} FROM read_parquet({listing}, hive_partitioning=true)")
    return {"pyarrow": _rows(arrow, table), "polars": sorted(frame.rows()), "duckdb": sorted(duck.fetchall())}


def _glob_rows(out: Path, table: str) -> dict[str, list[tuple]]:
    """What plain tools read from the table folder as the README shows them (every file under it)."""
    columns = COLUMNS[table]
    if not any((out / table).rglob("*.parquet")):
        return dict.fromkeys(("pyarrow", "polars", "duckdb"), [])
    pattern = f"{out}/{table}/**/*.parquet"
    arrow = ds.dataset(out / table, format="parquet", partitioning="hive").to_table(columns=columns)
    frame = pl.scan_parquet(pattern, hive_partitioning=True).select(columns).collect()
    duck = duckdb.connect().sql(f"SELECT {', '.join(columns)} FROM "
                                f"read_parquet({_sql_string(pattern)}, hive_partitioning=true)")
    return {"pyarrow": _rows(arrow, table), "polars": sorted(frame.rows()), "duckdb": sorted(duck.fetchall())}


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
