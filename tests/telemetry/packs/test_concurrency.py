"""Concurrency: one writer per pack across processes, a SIGKILLed writer's lock is taken over, and
readers during writing see whole commits only."""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from support import REPO
from support.packs import (
    FAULT_EPISODES,
    FAULT_MORE,
    FAULT_PROFILE,
    FAULT_SPLITS,
    TESTS,
    assert_bit_equal,
    expected_steps,
    make_episodes,
    read_back,
    reference,
)

from telemetry.errors import PackError
from telemetry.packs.lock import LOCK_NAME
from telemetry.packs.manifest import MANIFEST_NAME, read_manifest
from telemetry.packs.reader import open_pack
from telemetry.packs.staging import STAGING
from telemetry.packs.validate import validate_pack
from telemetry.packs.writer import PackWriter

PROFILE, SPLITS, EPISODES, MORE = FAULT_PROFILE, FAULT_SPLITS, FAULT_EPISODES, FAULT_MORE
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


# ---- concurrency ---------------------------------------------------------------------------------

def _steps_of(index: int) -> int:
    return 2 + index % 3


WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from support import REPO
from support.packs import make_episodes, reference
from telemetry.packs import writer as pack_writer
pack_writer.MAX_SMALL_FILES = 4  # compactions (which delete superseded files) while readers read
path, commits, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config, schema, _ = reference({profile!r})
with pack_writer.PackWriter.create(path, config, schema, splits={splits!r}) as writer:
    for c in range(commits):
        for i in range(c * per, (c + 1) * per):
            writer.add_episode(*make_episodes(i, 1, steps=2 + i % 3, profile={profile!r})[0])
        writer.commit()
        time.sleep(0.03)
"""


def _whole_commits(path: Path, per_commit: int) -> int:
    """One reader's view: whole commits, every episode with all its steps, counts and checksums agreeing."""
    pack = open_pack(path)  # verify=True: every file read is checksummed first
    stats = pack.manifest.quick_stats
    episodes = pack.episodes(columns=["episode_id", "split"]).to_pydict()
    steps = pack.steps(columns=["episode_id", "step", "split"]).to_pydict()
    n = len(episodes["episode_id"])
    assert (n, len(steps["step"])) == (stats.episodes, stats.steps)
    assert n % per_commit == 0, f"a partial commit: {n} episodes"
    assert sorted(episodes["episode_id"]) == [f"ep-{i:04d}" for i in range(n)]
    split = dict(zip(episodes["episode_id"], episodes["split"], strict=True))
    seen: dict[str, list[int]] = {}
    for episode_id, step, step_split in zip(*steps.values(), strict=True):
        assert split[episode_id] == step_split
        seen.setdefault(episode_id, []).append(step)
    assert {e: sorted(s) for e, s in seen.items()} == {f"ep-{i:04d}": list(range(_steps_of(i))) for i in range(n)}
    assert pack.tensors().features.shape[0] == stats.steps
    assert pack.duckdb().sql("SELECT count(*) FROM steps").fetchall() == [(stats.steps,)]
    return pack.manifest.commit


def test_readers_during_writing_see_whole_commits_only(tmp_path: Path) -> None:
    """A writer process commits in a loop (compacting as it goes) while this process keeps reading: every
    read is one complete commit, or a clean error naming a file a compaction has just superseded."""
    path, commits, per = tmp_path / "p", 24, 3
    script = WRITER.format(tests=str(TESTS), profile=PROFILE, splits=SPLITS)
    writer = subprocess.Popen([sys.executable, "-c", script, str(path), str(commits), str(per)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (path / MANIFEST_NAME).exists() and writer.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    observed: list[int] = []
    errors: list[str] = []
    while writer.poll() is None:
        assert time.monotonic() < deadline, "the writer did not finish"
        try:
            observed.append(_whole_commits(path, per))
        except (PackError, duckdb.IOException) as exc:  # a file deleted by compaction after the check
            errors.append(str(exc))
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    final = _whole_commits(path, per)
    assert read_manifest(path).quick_stats.episodes == commits * per
    assert len(set(observed)) >= 3, f"too few commits observed while writing: {observed}"
    assert observed == sorted(observed) and observed[-1] <= final
    assert all(str(path) in e and ("missing" in e or "No files found" in e or "No such file" in e)
               for e in errors), errors
    assert validate_pack(path) == []


def test_a_second_writer_process_is_refused(tmp_path: Path) -> None:
    """The lock is a flock, so another process is refused too, and told who holds the pack."""
    config, schema, _ = reference(PROFILE)
    script = ("import sys; from pathlib import Path; from telemetry.packs.lock import WriterLock; "
              "WriterLock.acquire(Path(sys.argv[1]))")
    with PackWriter.create(tmp_path / "p", config, schema) as writer:
        writer.add_episode(*EPISODES[0])
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p")], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert f"another writer holds the pack (pid {os.getpid()} on " in result.stderr
    assert_bit_equal(read_back(tmp_path / "p"), expected_steps(EPISODES[:1], PROFILE))


HOLDER = """
import sys, time
sys.path.insert(0, {tests!r})
from support import REPO
from support.packs import make_episodes, reference
from telemetry.packs import staging, writer as pack_writer
staging.ROW_GROUP_ROWS = pack_writer.ROW_GROUP_ROWS = 4  # rows reach staged files before any commit
config, schema, _ = reference({profile!r})
writer = pack_writer.PackWriter.open_append(sys.argv[1], config, schema)
for episode, steps in make_episodes(6, 2, steps=4, profile={profile!r}):
    writer.add_episode(episode, steps)
writer.commit()
for episode, steps in make_episodes(8, 3, steps=4, profile={profile!r}):
    writer.add_episode(episode, steps)
for stream in writer._streams.values():
    for write in stream._writes:
        write.result()
print("READY", flush=True)
time.sleep(600)
"""


def _wait_for(process: subprocess.Popen[str], line: str, timeout: float) -> None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no {line!r} from the child within {timeout} s"
    assert process.stdout.readline().strip() == line


def test_a_sigkilled_writer_leaves_its_commits_and_a_stale_lock_that_is_taken_over(pristine: Path,
                                                                                    tmp_path: Path) -> None:
    """While the child writes, this process is refused (naming the child) but reads its commit; after
    SIGKILL the flock is gone, so a new writer takes over the stale lock file and drops the staged rows."""
    path = Path(shutil.copytree(pristine, tmp_path / "p", symlinks=True))
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(tests=str(TESTS), profile=PROFILE), str(path)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for(child, "READY", 180)
        config, schema, _ = reference(PROFILE)
        with pytest.raises(PackError, match=rf"another writer holds the pack \(pid {child.pid} on "):
            PackWriter.open_append(path, config, schema)
        committed = [*EPISODES, *make_episodes(6, 2, steps=4, profile=PROFILE)]
        assert_bit_equal(read_back(path), expected_steps(committed, PROFILE))
        assert any((path / STAGING).iterdir()), "the child should have uncommitted rows in staged files"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert json.loads((path / LOCK_NAME).read_text())["pid"] == child.pid  # left behind, no longer held
    with PackWriter.open_append(path, config, schema) as writer:
        assert not any((path / STAGING).iterdir())
        for episode, steps in make_episodes(8, 3, steps=4, profile=PROFILE):
            writer.add_episode(episode, steps)  # the killed writer's uncommitted ids are free again
    assert validate_pack(path) == []
    assert_bit_equal(read_back(path), expected_steps([*committed, *make_episodes(8, 3, steps=4, profile=PROFILE)],
                                                     PROFILE))
    assert not (path / LOCK_NAME).exists()
