"""The versioned layout: each commit is a version folder that one rename of `current` publishes.

A bare glob of the table folders reads exactly the commit the manifest names at every step of a
commit, a compaction and a close; a reader that opened the previous manifest still reads it while
that version folder is kept; packs of the earlier layout (real folders, a regular manifest.json) and
copies that followed the links read as before and are converted when a writer opens them, every
step of the conversion leaving a readable pack; links cannot lead a reader or `esper validate`
outside the pack; `esper validate` checks the links and names what an interrupted write left.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest
from support.packs import assert_bit_equal, expected_steps, make_episodes, read_back, reference, write_pack

from telemetry.cli import main
from telemetry.errors import PackError
from telemetry.packs import commit as pack_layout
from telemetry.packs import faults
from telemetry.packs import writer as pack_writer
from telemetry.packs.card import CARD_NAME, GUARD_NAME
from telemetry.packs.manifest import MANIFEST_NAME, TABLES, read_manifest
from telemetry.packs.reader import open_pack
from telemetry.packs.splits import split_of
from telemetry.packs.validate import leftovers, validate_pack
from telemetry.packs.writer import PackWriter

PROFILE = "minimal"
SPLITS = {"train": 0.5, "test": 0.5}
EPISODES = make_episodes(0, 6, steps=4, profile=PROFILE)
MORE = make_episodes(6, 4, steps=4, profile=PROFILE)


class SimulatedCrash(BaseException):
    """Raised at a checkpoint; BaseException so no cleanup code mistakes it for an error."""


def _base(path: Path) -> Path:
    write_pack(path, EPISODES, commit_every=2, profile=PROFILE, splits=SPLITS)
    return path


def _glob(pack: Path, table: str) -> list[tuple]:
    """(episode_id, split) of every row plain tools read from PACK/<table>/**/*.parquet; the three agree."""
    if not (pack / table).is_dir() or not any((pack / table).rglob("*.parquet")):
        return []
    pattern = f"{pack}/{table}/**/*.parquet"
    duck = duckdb.connect().sql(f"SELECT episode_id, split FROM read_parquet('{pattern}', hive_partitioning=true)")
    frame = pl.scan_parquet(pattern, hive_partitioning=True).select("episode_id", "split").collect()
    arrow = ds.dataset(pack / table, format="parquet", partitioning="hive").to_table(columns=["episode_id", "split"])
    rows = sorted(duck.fetchall())
    assert sorted(frame.rows()) == rows and sorted(zip(*arrow.to_pydict().values(), strict=True)) == rows
    return rows


def _committed(pack: Path, table: str) -> list[tuple]:
    """The same rows through the project's reader (the manifest's files)."""
    read = open_pack(pack).steps if table == "steps" else open_pack(pack).episodes
    return sorted(zip(*read(columns=["episode_id", "split"]).to_pydict().values(), strict=True))


def _assert_globs_read_the_commit(pack: Path) -> None:
    for table in TABLES:
        assert _glob(pack, table) == _committed(pack, table), table


def _assert_one_clean_version(pack: Path) -> None:
    """A closed pack: the links, one version folder (each file stored once), nothing left over."""
    manifest = read_manifest(pack)
    assert pack_layout.is_canonical(pack, manifest)
    assert sorted(p.name for p in pack.iterdir()) == sorted([".versions", "current", MANIFEST_NAME, CARD_NAME,
                                                             GUARD_NAME, *TABLES])
    assert [p.name for p in (pack / ".versions").iterdir()] == [f"{manifest.commit:06d}"]
    assert len([p for p in pack.rglob("*.parquet") if p.name != GUARD_NAME]) == len(manifest.files)
    assert validate_pack(pack) == [] and leftovers(pack) == []


def _earlier_layout(pack: Path, out: Path) -> Path:
    """The same commit as a pack of the earlier layout: real table folders and a regular manifest.json."""
    out.mkdir()
    shutil.copy(pack / MANIFEST_NAME, out / MANIFEST_NAME)
    for entry in read_manifest(pack).files:
        (out / entry.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pack / entry.path, out / entry.path)
    return out


# ---- every instant of a commit -------------------------------------------------------------------

def test_a_bare_glob_reads_the_manifests_commit_at_every_step_of_commits_compactions_and_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _base(tmp_path / "p")
    monkeypatch.setattr(pack_writer, "MAX_SMALL_FILES", 3)  # compactions while writing, and one at close
    stages: list[str] = []

    def check(stage: str) -> None:
        stages.append(stage)
        _assert_globs_read_the_commit(path)

    config, schema, _ = reference(PROFILE)
    writer = PackWriter.open_append(path, config, schema)
    monkeypatch.setattr(faults, "checkpoint", check)
    for episode, steps in MORE:
        writer.add_episode(episode, steps)
        writer.commit()
    writer.close()
    assert {"staged", "linked", "renamed", "manifest_staged", "manifest_replaced", "old_deleted"} <= set(stages)
    assert_bit_equal(read_back(path), expected_steps([*EPISODES, *MORE], PROFILE))
    _assert_one_clean_version(path)


def test_a_reader_of_the_previous_manifest_reads_it_while_its_version_folder_is_kept(tmp_path: Path) -> None:
    """Compaction supersedes small files; the previous version folder keeps them for readers that opened
    its manifest, until the writer closes (a closed pack is one version) and they get a clean error."""
    path = _base(tmp_path / "p")
    config, schema, _ = reference(PROFILE)
    writer = PackWriter.open_append(path, config, schema)
    for episode, steps in MORE:
        writer.add_episode(episode, steps)
        writer.commit()
    before = open_pack(path)
    writer.compact()
    assert {f.path for f in before.manifest.files} - {f.path for f in writer.manifest.files}, "nothing superseded"
    expected = expected_steps([*EPISODES, *MORE], PROFILE)
    assert_bit_equal(before.steps().drop_columns(["split"]).sort_by([("episode_id", "ascending"),
                                                                      ("step", "ascending")]), expected)
    assert before.duckdb().sql("SELECT count(*) FROM steps").fetchall() == [(expected.num_rows,)]
    assert before.lazy().collect().height == expected.num_rows
    writer.close()
    assert_bit_equal(read_back(path), expected)  # a fresh reader is fine; the old one's superseded files are gone
    with pytest.raises(PackError, match="listed in manifest.json but missing"):
        before.steps()


# ---- other layouts -------------------------------------------------------------------------------

def test_a_pack_of_the_earlier_layout_reads_and_is_converted_when_appended_to(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _earlier_layout(_base(tmp_path / "p"), tmp_path / "old")
    listed = read_manifest(old).files_of("steps")[0]
    stray = (old / listed.path).with_name("part-999999-left-by-a-crash.parquet")  # the earlier protocol's gap
    shutil.copy(old / listed.path, stray)
    assert_bit_equal(read_back(old), expected_steps(EPISODES, PROFILE))
    assert validate_pack(old) == [f"{stray}: not listed in manifest.json (left by an interrupted write; "
                                  "project readers skip it but plain Parquet readers would not)"]
    config, schema, _ = reference(PROFILE)
    with PackWriter.open_append(old, config, schema) as writer:
        assert pack_layout.is_canonical(old, read_manifest(old)) and not stray.exists()
        _assert_globs_read_the_commit(old)
        for episode, steps in MORE:
            writer.add_episode(episode, steps)
    assert_bit_equal(read_back(old), expected_steps([*EPISODES, *MORE], PROFILE))
    _assert_globs_read_the_commit(old)
    _assert_one_clean_version(old)
    capsys.readouterr()
    assert main(["validate", str(old)]) == 0 and "sound" in capsys.readouterr().out


def test_a_copy_that_followed_the_links_reads_and_is_converted(tmp_path: Path) -> None:
    """shutil.copytree, zip or `cp -L` store real folders where the links were: an earlier-layout pack
    with stale copies of `current` and the version folders, which conversion drops."""
    copy = Path(shutil.copytree(_base(tmp_path / "p"), tmp_path / "copy"))
    assert not (copy / "current").is_symlink() and (copy / "current").is_dir()
    assert_bit_equal(read_back(copy), expected_steps(EPISODES, PROFILE))
    [problem] = validate_pack(copy)  # readable, but named: the data is stored three times
    assert problem.startswith(f"{copy}: a copy that followed the pack's links") and "esper repair" in problem
    config, schema, _ = reference(PROFILE)
    with PackWriter.open_append(copy, config, schema) as writer:
        for episode, steps in MORE:
            writer.add_episode(episode, steps)
    assert_bit_equal(read_back(copy), expected_steps([*EPISODES, *MORE], PROFILE))
    _assert_globs_read_the_commit(copy)
    _assert_one_clean_version(copy)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "no_exchange"])
def test_a_conversion_cut_short_at_any_step_reads_as_the_commit_and_the_next_writer_completes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    """Without an atomic exchange (renameat2 is Linux-only) a table folder is moved aside before its link
    takes its name: the project's readers still read the commit then, plain globs find no folder."""
    if not exchange:
        monkeypatch.setattr(pack_layout, "_exchange", lambda a, b: False)
    base = _base(tmp_path / "base")
    config, schema, _ = reference(PROFILE)
    stages: list[str] = []
    monkeypatch.setattr(faults, "checkpoint", stages.append)
    PackWriter.open_append(_earlier_layout(base, tmp_path / "record"), config, schema).close()
    assert stages.count("migrate_swapped") == 4 and stages.count("migrate_moved_aside") == (0 if exchange else 2)
    for at in range(len(stages)):
        path = _earlier_layout(base, tmp_path / f"crash{at}")
        calls = iter(range(len(stages)))

        def crash(stage: str, at: int = at, calls=calls) -> None:
            if next(calls) == at:
                raise SimulatedCrash(stage)

        monkeypatch.setattr(faults, "checkpoint", crash)
        with pytest.raises(SimulatedCrash):
            PackWriter.open_append(path, config, schema)  # releases its lock on the way out, as a dead one would
        monkeypatch.setattr(faults, "checkpoint", lambda stage: None)
        assert_bit_equal(read_back(path), expected_steps(EPISODES, PROFILE))
        for table in TABLES:
            glob = _glob(path, table)
            assert glob == _committed(path, table) or (glob == [] and stages[at] == "migrate_moved_aside"), table
        PackWriter.open_append(path, config, schema).close()
        assert_bit_equal(read_back(path), expected_steps(EPISODES, PROFILE))
        _assert_globs_read_the_commit(path)
        _assert_one_clean_version(path)


# ---- links that lead out, and what validate says -------------------------------------------------

def test_a_link_leading_out_of_the_pack_is_refused_by_readers_and_validate(tmp_path: Path) -> None:
    """Manifest paths cannot leave the pack ('..', absolute); nor may a planted link inside it."""
    path = _base(tmp_path / "p")
    entry = read_manifest(path).files_of("steps")[0]
    outside = tmp_path / "outside.parquet"
    shutil.copy(path / entry.path, outside)  # byte-identical: only the containment check can refuse it
    (path / entry.path).unlink()
    os.symlink(outside, path / entry.path)
    for verify in (True, False):
        with pytest.raises(PackError, match=f"{path / entry.path}: leads outside the pack"):
            open_pack(path, verify=verify).steps()
    assert validate_pack(path) == [f"{path / entry.path}: leads outside the pack (through a symbolic link)"]
    config, schema, _ = reference(PROFILE)
    writer = PackWriter.open_append(path, config, schema)
    writer.add_episode(*next(e for e in MORE if split_of(e[0]["episode_id"], SPLITS) == entry.split))
    writer.commit()  # the next version links the link itself: still refused, not followed
    assert validate_pack(path) == [f"{path / entry.path}: leads outside the pack (through a symbolic link)"]
    with pytest.raises(PackError, match=f"{path / entry.path}: leads outside the pack"):
        writer.close()  # compaction would copy the file in: refused
    assert validate_pack(path) == [f"{path / entry.path}: leads outside the pack (through a symbolic link)"]


def test_validate_checks_the_links_and_lists_stray_files_in_the_current_version(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _base(tmp_path / "p")
    manifest = read_manifest(path)
    unpublished = path / ".versions" / f"{manifest.commit + 1:06d}"
    (unpublished / "steps").mkdir(parents=True)  # what a commit killed before its rename leaves
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: sound") and str(unpublished) in out[1] and out[1].startswith("note: ")

    entry = manifest.files_of("steps")[0]
    stray = (path / entry.path).with_name("part-999999-stray.parquet")
    shutil.copy(path / entry.path, stray)
    assert stray.resolve().parent.parent.parent.name == f"{manifest.commit:06d}"  # inside the current version
    assert validate_pack(path) == [f"{stray}: not listed in manifest.json (left by an interrupted write; "
                                   "project readers skip it but plain Parquet readers would not)"]
    stray.unlink()

    os.unlink(path / "steps")
    os.symlink(f".versions/{manifest.commit:06d}/steps", path / "steps")  # right files, but no longer through `current`
    assert validate_pack(path) == [f"{path / 'steps'}: a link to '.versions/{manifest.commit:06d}/steps', expected a "
                                   "link to 'current/steps' (plain Parquet readers would not read the last commit)"]
    config, schema, _ = reference(PROFILE)
    PackWriter.open_append(path, config, schema).close()  # a writer puts the link right
    _assert_one_clean_version(path)


def test_a_commit_names_a_committed_file_that_went_missing_and_leaves_nothing(tmp_path: Path) -> None:
    path = _base(tmp_path / "p")
    before = read_manifest(path)
    entry = before.files_of("steps")[0]
    (path / entry.path).unlink()
    config, schema, _ = reference(PROFILE)
    writer = PackWriter.open_append(path, config, schema)
    writer.add_episode(*MORE[0])
    with pytest.raises(PackError, match=f"{path / entry.path}: listed in manifest.json but missing"):
        writer.commit()  # the new version folder would link it
    writer.close()
    assert read_manifest(path) == before and leftovers(path) == [] and not (path / "_staging").exists()
    assert validate_pack(path) == [f"{path / entry.path}: listed in manifest.json but missing"]
