"""The writer: manifest and files agree, row groups are large, small files get compacted, a crash
between any two steps of the commit protocol leaves the previous commit readable, bad input and
mismatched appends change nothing, and one writer at a time holds a pack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.packs import (
    TESTS,
    assert_bit_equal,
    expected_steps,
    make_episodes,
    read_back,
    reference,
    sort,
    write_pack,
)

from telemetry.config import load_config
from telemetry.errors import PackError
from telemetry.packs import faults
from telemetry.packs import writer as writer_module
from telemetry.packs.card import GUARD_NAME
from telemetry.packs.lock import LOCK_NAME
from telemetry.packs.manifest import read_manifest
from telemetry.packs.reader import open_pack
from telemetry.packs.tables import episodes_schema
from telemetry.packs.tables import steps_schema as _steps_schema
from telemetry.packs.validate import validate_pack
from telemetry.packs.writer import PackWriter

EPISODES = make_episodes(0, 8, steps=5)


class SimulatedCrash(BaseException):
    """Raised at a commit checkpoint; BaseException so no cleanup code mistakes it for an error."""


def _die(writer: PackWriter) -> None:
    """What a dead process leaves: files as they are, the lock file in place but no longer held."""
    writer._pool.shutdown(wait=True)
    if writer._lock.fd is not None:  # close() may already have let go of it on the way out
        os.close(writer._lock.fd)
        writer._lock.fd = None


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- manifest and files --------------------------------------------------------------------------

def test_manifest_lists_every_file_with_size_rows_and_checksum(tmp_path):
    write_pack(tmp_path / "p", EPISODES, commit_every=3)
    manifest = read_manifest(tmp_path / "p")
    pack = tmp_path / "p"
    on_disk = sorted(p.relative_to(pack).as_posix() for t in ("steps", "episodes")
                     for p in (pack / t).rglob("*.parquet"))
    assert sorted(f.path for f in manifest.files) == on_disk
    # and nothing else is stored: a closed pack is the last commit's version folder (its files, once each)
    stored = sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*.parquet") if p.name != GUARD_NAME)
    assert stored == sorted(f".versions/{manifest.commit:06d}/{f.path}" for f in manifest.files)
    for entry in manifest.files:
        data = (tmp_path / "p" / entry.path).read_bytes()
        assert entry.bytes == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.rows == pq.read_metadata(tmp_path / "p" / entry.path).num_rows
        assert entry.path.startswith(f"{entry.table}/split={entry.split}/")
    assert manifest.quick_stats.steps == sum(len(s) for _, s in EPISODES)
    assert manifest.quick_stats.episodes == len(EPISODES)
    assert not (tmp_path / "p" / LOCK_NAME).exists() and not (tmp_path / "p" / "_staging").exists()
    assert validate_pack(tmp_path / "p") == []


def test_parquet_settings_are_applied(tmp_path):
    write_pack(tmp_path / "p", EPISODES[:2])
    entry = next(f for f in read_manifest(tmp_path / "p").files if f.table == "steps")
    meta = pq.read_metadata(tmp_path / "p" / entry.path)
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i)
               for i in range(meta.num_columns)}
    val_loss, action = columns["val_loss"], columns["action"]
    assert val_loss.compression == "ZSTD"
    assert "BYTE_STREAM_SPLIT" in val_loss.encodings and "RLE_DICTIONARY" not in val_loss.encodings
    assert "RLE_DICTIONARY" in action.encodings
    assert val_loss.statistics is not None and val_loss.statistics.has_min_max


@pytest.mark.parametrize(("lanes", "expected"), [(1, [[8, 8, 8], [8, 8, 8], [8, 4]]),
                                                 (2, [[8, 8, 8], [8, 8, 8], [8], [4]])])
def test_rows_go_out_in_full_row_groups_and_files_roll_over(tmp_path, row_groups, monkeypatch, lanes, expected):
    """Row group i goes to lane i % lanes (files encoded in parallel); files are listed in row order."""
    row_groups(8, file_rows=24)
    monkeypatch.setattr(writer_module, "LANES", lanes)
    episodes = make_episodes(0, 12, steps=5)
    write_pack(tmp_path / "p", episodes, splits={"train": 1.0})
    files = [f for f in read_manifest(tmp_path / "p").files if f.table == "steps"]
    groups = [[pq.read_metadata(tmp_path / "p" / f.path).row_group(i).num_rows
               for i in range(pq.read_metadata(tmp_path / "p" / f.path).num_row_groups)] for f in files]
    assert groups == expected
    assert_bit_equal(read_back(tmp_path / "p"), expected_steps(episodes))


def test_a_bulk_add_whose_splits_interleave_keeps_each_splits_rows_in_order(tmp_path, row_groups):
    """Routing a bulk add: every split's files hold exactly its episodes' steps, in full row groups,
    each row group a run of the rows in the order given; its quick stats match a float64 recomputation."""
    row_groups(7, file_rows=21)  # 7 does not divide 5-step episodes: routed rows straddle row groups
    episodes = make_episodes(0, 40, steps=5)
    config, schema, _ = reference()
    with PackWriter.create(tmp_path / "p", config, schema, splits={"train": 0.6, "val": 0.2, "test": 0.2}) as w:
        table = pa.Table.from_pylist([e for e, _ in episodes], schema=episodes_schema())
        splits = w.add_episodes(table, expected_steps(episodes))
    assert len(set(splits)) == 3 and splits != sorted(splits)  # the splits really interleave
    manifest = read_manifest(tmp_path / "p")
    for split in ("train", "val", "test"):
        mine = [ep for ep, s in zip(episodes, splits, strict=True) if s == split]
        files = [tmp_path / "p" / f.path for f in manifest.files_of("steps", [split])]
        groups = [pq.ParquetFile(f).read_row_group(i, columns=["episode_id", "step"]).to_pylist()
                  for f in files for i in range(pq.read_metadata(f).num_row_groups)]
        order = [(ep["episode_id"], step) for ep, rows in mine for step in range(len(rows))]
        groups.sort(key=lambda g: order.index((g[0]["episode_id"], g[0]["step"])))
        assert [(r["episode_id"], r["step"]) for g in groups for r in g] == order
        assert all(len(g) == 7 for g in groups[:-1])
        got = pa.concat_tables([pq.read_table(f, schema=_steps_schema(schema)) for f in files])
        assert_bit_equal(sort(got), expected_steps(mine))
        values = np.array([r["val_loss"] for _, rows in mine for r in rows], dtype=np.float64)
        stats = manifest.split_stats[split].columns["val_loss"]
        assert stats.count == len(values) and stats.mean == pytest.approx(values.mean(), rel=1e-6)
        assert stats.std == pytest.approx(values.std(), rel=1e-5)


def test_close_compacts_small_files_and_deletes_the_old_ones(tmp_path, row_groups):
    row_groups(16)
    write_pack(tmp_path / "p", EPISODES, commit_every=1, splits={"train": 0.5, "test": 0.5})
    manifest = read_manifest(tmp_path / "p")
    per_split = {(f.table, f.split) for f in manifest.files}
    assert len(manifest.files) == len(per_split)  # one file per table and split
    assert len([p for p in (tmp_path / "p").rglob("*.parquet") if p.name != GUARD_NAME]) == len(manifest.files)
    for f in manifest.files:
        meta = pq.read_metadata(tmp_path / "p" / f.path)
        assert all(meta.row_group(i).num_rows == 16 for i in range(meta.num_row_groups - 1))
    assert_bit_equal(read_back(tmp_path / "p"), expected_steps(EPISODES))
    assert validate_pack(tmp_path / "p") == []


def test_many_small_commits_are_compacted_while_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "MAX_SMALL_FILES", 2)
    config, schema, _ = reference()
    with PackWriter.create(tmp_path / "p", config, schema, splits={"train": 1.0}) as writer:
        for episode, steps in EPISODES:
            writer.add_episode(episode, steps)
            writer.commit()
            assert len(writer.manifest.files_of("steps")) <= 3
    assert_bit_equal(read_back(tmp_path / "p"), expected_steps(EPISODES))


def test_commit_without_new_rows_changes_nothing(tmp_path):
    config, schema, _ = reference()
    with PackWriter.create(tmp_path / "p", config, schema) as writer:
        writer.add_episode(*EPISODES[0])
        first = writer.commit()
        assert writer.commit() == first and writer.pending_rows == 0


def test_empty_pack_reads_as_empty_tables(tmp_path):
    config, schema, _ = reference()
    PackWriter.create(tmp_path / "p", config, schema).close()
    pack = open_pack(tmp_path / "p")
    assert pack.steps().num_rows == 0 and pack.steps().schema.names[-1] == "split"
    assert pack.duckdb().sql("SELECT count(*) FROM decisions").fetchall() == [(0,)]
    assert pack.lazy().collect().height == 0
    assert pack.tensors().features.shape == (0, len(schema))


# ---- crashes -------------------------------------------------------------------------------------

def _base(path: Path) -> Path:
    """A pack of two commits (so two small files per table) to append to and crash in."""
    write_pack(path, EPISODES[:4], commit_every=2, splits={"train": 1.0})
    return path


def _append_and_close(path: Path, checkpoint, opened: list[PackWriter]) -> None:
    config, schema, _ = reference()
    writer = PackWriter.open_append(path, config, schema)
    opened.append(writer)
    for episode, steps in EPISODES[4:]:
        writer.add_episode(episode, steps)
    faults.checkpoint = checkpoint
    try:
        writer.close()  # a commit, then a compaction that deletes the superseded small files
    finally:
        faults.checkpoint = lambda stage: None


def _crash_points(stages: list[str]) -> list[int]:
    """Every checkpoint, except that runs of one repeated stage keep only their first and last."""
    return [i for i, s in enumerate(stages)
            if i in (0, len(stages) - 1) or s != stages[i - 1] or s != stages[i + 1]]


def test_a_crash_at_any_step_leaves_the_last_commit_readable(tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "checkpoint", lambda stage: None)
    base = _base(tmp_path / "base")
    stages: list[str] = []
    shutil.copytree(base, tmp_path / "record", symlinks=True)
    _append_and_close(tmp_path / "record", stages.append, [])
    assert stages.count("manifest_replaced") == 2 and stages[-1] == "old_deleted"
    first_commit = stages.index("manifest_replaced")
    for at in _crash_points(stages):
        path = shutil.copytree(base, tmp_path / f"crash{at}", symlinks=True)
        calls = iter(range(len(stages)))

        def crash(stage, at=at, calls=calls):
            if next(calls) == at:
                raise SimulatedCrash(stage)

        opened: list[PackWriter] = []
        with pytest.raises(SimulatedCrash):
            _append_and_close(path, crash, opened)
        _die(opened[0])
        expected = expected_steps(EPISODES if at >= first_commit else EPISODES[:4])
        assert_bit_equal(read_back(path), expected)
        problems = validate_pack(path)
        assert all("not listed in manifest.json" in p for p in problems), (stages[at], problems)
        config, schema, _ = reference()
        PackWriter.open_append(path, config, schema).close()  # takes the dead lock, clears leftovers
        assert validate_pack(path) == [], stages[at]
        assert_bit_equal(read_back(path), expected)


def test_a_killed_process_leaves_a_readable_pack_and_a_stale_lock(tmp_path):
    path = tmp_path / "p"
    write_pack(path, EPISODES[:3])
    script = f"""
import os, sys
sys.path.insert(0, {str(TESTS)!r})
from support.packs import make_episodes, reference
from telemetry.packs import faults, writer as pack_writer
config, schema, _ = reference()
writer = pack_writer.PackWriter.open_append({str(path)!r}, config, schema)
for episode, steps in make_episodes(3, 3, steps=5):
    writer.add_episode(episode, steps)
faults.checkpoint = lambda stage: os._exit(9) if stage == "renamed" else None
writer.commit()
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=TESTS.parent, timeout=120)
    assert result.returncode == 9
    assert json.loads((path / LOCK_NAME).read_text())["pid"] != os.getpid()
    assert_bit_equal(read_back(path), expected_steps(EPISODES[:3]))
    config, schema, _ = reference()
    with PackWriter.open_append(path, config, schema) as writer:
        writer.add_episode(*EPISODES[3])
    assert validate_pack(path) == []
    assert_bit_equal(read_back(path), expected_steps(EPISODES[:4]))


# ---- refusals ------------------------------------------------------------------------------------

def test_append_with_another_config_or_schema_is_refused(tmp_path):
    write_pack(tmp_path / "p", EPISODES[:2])
    before = _snapshot(tmp_path / "p")
    _, diagnostic, _ = reference()
    _, standard_schema, _ = reference("standard")
    longer = load_config("diagnostic", overrides=["history_length=30"])
    with pytest.raises(PackError, match="telemetry_config.history_length is 20 in the pack but 30 here"):
        PackWriter.open_append(tmp_path / "p", longer, diagnostic)
    pairs = zip(diagnostic.names, standard_schema.names, strict=False)
    first = next(i for i, (a, b) in enumerate(pairs) if a != b)
    with pytest.raises(PackError, match=f"cannot append: feature {first} is '{diagnostic.names[first]}'"):
        PackWriter.open_append(tmp_path / "p", reference()[0], standard_schema)
    n = len(diagnostic)
    with pytest.raises(PackError, match=f"the pack has {n} features, this feature schema {n - 1}"):
        PackWriter.open_append(tmp_path / "p", reference()[0], diagnostic.select(diagnostic.names[:-1]))
    assert _snapshot(tmp_path / "p") == before


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda e, s: s[1].update(bogus=1.0), "unknown column 'bogus'"),
    (lambda e, s: s[2].update(val_loss="high"), "row 2: val_loss = 'high'; expected float"),
    (lambda e, s: s[0].update(action="EXPLODE"), "action 'EXPLODE' is not one of the pack's actions"),
    (lambda e, s: s[3].update(action_mask=[True, False]), "action_mask has 2 entries; expected 8"),
    (lambda e, s: s[3].update(step=0), "step 0 appears twice"),
    (lambda e, s: e.update(episode_id=""), "episode_id is ''; expected a non-empty string"),
    (lambda e, s: e.update(episode_id="ep-0000"), "episode 'ep-0000' is already in the pack"),
])
def test_bad_input_is_refused_and_changes_nothing(tmp_path, mutate, message):
    config, schema, _ = reference()
    episode, steps = make_episodes(50, 1, steps=5)[0]
    mutate(episode, steps)
    with PackWriter.create(tmp_path / "p", config, schema) as writer:
        writer.add_episode(*EPISODES[0])
        writer.commit()
        with pytest.raises(PackError, match=message):
            writer.add_episode(episode, steps)
        assert writer.pending_rows == 0
    assert_bit_equal(read_back(tmp_path / "p"), expected_steps(EPISODES[:1]))


def test_create_refuses_bad_arguments_before_touching_the_disk(tmp_path):
    config, schema, _ = reference()
    for kwargs, message in [({"actions": ["WAIT", "WAIT"]}, "contains duplicates"),
                            ({"splits": {"train": 0.7, "test": 0.2}}, "sum to 0.9"),
                            ({"splits": {"Train": 1.0}}, "not a lower-case identifier"),
                            ({"provenance": {"seeds": "many"}}, "provenance.seeds")]:
        with pytest.raises(PackError, match=message):
            PackWriter.create(tmp_path / "new", config, schema, **kwargs)
        assert not (tmp_path / "new").exists()
    write_pack(tmp_path / "p", EPISODES[:1])
    with pytest.raises(PackError, match="already exists and is not an empty directory"):
        PackWriter.create(tmp_path / "p", config, schema)


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    config, schema, _ = reference()
    writer = PackWriter.create(tmp_path / "p", config, schema)
    with pytest.raises(PackError, match=rf"another writer holds the pack \(pid {os.getpid()} on "):
        PackWriter.open_append(tmp_path / "p", config, schema)
    writer.close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "p" / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "here", "since": "then"}))
    with PackWriter.open_append(tmp_path / "p", config, schema) as writer:
        writer.add_episode(*EPISODES[0])
    assert read_manifest(tmp_path / "p").quick_stats.episodes == 1


def test_an_exception_inside_the_with_block_keeps_the_last_commit(tmp_path):
    config, schema, _ = reference()
    with pytest.raises(RuntimeError), PackWriter.create(tmp_path / "p", config, schema) as writer:
        writer.add_episode(*EPISODES[0])
        writer.commit()
        writer.add_episode(*EPISODES[1])
        raise RuntimeError("generation failed")
    assert_bit_equal(read_back(tmp_path / "p"), expected_steps(EPISODES[:1]))
    assert validate_pack(tmp_path / "p") == []
    with pytest.raises(PackError, match="this writer is closed"):
        writer.add_episode(*EPISODES[2])


def test_splits_are_by_episode_and_stable_across_appends(tmp_path):
    write_pack(tmp_path / "p", EPISODES[:4])
    config, schema, _ = reference()
    with PackWriter.open_append(tmp_path / "p", config, schema) as writer:
        for episode, steps in EPISODES[4:]:
            writer.add_episode(episode, steps)
    pack = open_pack(tmp_path / "p")
    episodes = dict(zip(*pack.episodes(columns=["episode_id", "split"]).to_pydict().values(), strict=True))
    steps = pack.steps(columns=["episode_id", "split"]).to_pylist()
    assert all(episodes[r["episode_id"]] == r["split"] for r in steps)
    from telemetry.packs.splits import split_of
    assert all(split_of(e) == s for e, s in episodes.items())


def test_without_profiles_the_pack_records_its_own_unmodified_profile(tmp_path):
    config, schema, _ = reference("standard")
    PackWriter.create(tmp_path / "own", config, schema).close()
    assert read_manifest(tmp_path / "own").profiles == {"standard": schema.names}
    changed = load_config("standard", overrides=["gradients.track_std=false"])
    PackWriter.create(tmp_path / "changed", changed, schema).close()
    assert read_manifest(tmp_path / "changed").profiles == {}
