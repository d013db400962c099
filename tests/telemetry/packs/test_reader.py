"""Readers: filters and projections, feature selection by profile / group / name, normalisation
against independently recomputed statistics, and damaged, missing or unlisted files."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from support.models import LIFECYCLE, MINIMAL
from support.packs import make_episodes, reference, write_pack

from telemetry.errors import PackError
from telemetry.packs.manifest import read_manifest
from telemetry.packs.reader import open_pack
from telemetry.packs.validate import validate_pack
from telemetry.packs.writer import PackWriter

EPISODES = make_episodes(0, 10, steps=5)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("reader") / "pack"
    write_pack(path, EPISODES, commit_every=4, splits={"train": 0.6, "val": 0.2, "test": 0.2})
    return path


@pytest.fixture
def copy(pack, tmp_path):
    return shutil.copytree(pack, tmp_path / "copy", symlinks=True)


def test_filters_by_split_episode_and_columns(pack):
    p = open_pack(pack)
    train = p.steps(split="train", columns=["episode_id", "step", "val_loss", "split"])
    assert train.column_names == ["episode_id", "step", "val_loss", "split"]
    assert set(train.column("split").to_pylist()) == {"train"}
    both = p.steps(split=["train", "val"], columns=["split"])
    assert both.num_rows == train.num_rows + p.steps(split="val", columns=["step"]).num_rows
    one = p.steps(episodes="ep-0003", columns=["episode_id", "step"])
    assert one.column("episode_id").to_pylist() == ["ep-0003"] * 5
    assert one.column("step").to_pylist() == list(range(5))
    assert p.episodes(episodes=["ep-0001", "ep-0002", "nope"]).num_rows == 2
    assert p.steps().num_rows == sum(len(s) for _, s in EPISODES)


def test_unknown_split_column_or_table_is_a_clear_error(pack):
    p = open_pack(pack)
    with pytest.raises(PackError, match="no split 'training'; the pack's splits are train, val, test"):
        p.steps(split="training")
    with pytest.raises(PackError, match="the steps table has no column 'vall_loss'"):
        p.steps(columns=["vall_loss"])
    with pytest.raises(PackError, match="no table 'step'"):
        p.lazy("step")


def test_lazy_frame_pushes_down_and_filters(pack):
    import polars as pl

    lazy = open_pack(pack).lazy(split="val")
    frame = lazy.filter(pl.col("step") == 0).select("episode_id", "split").collect()
    val_episodes = open_pack(pack).episodes(split="val", columns=["episode_id"]).column(0).to_pylist()
    assert sorted(frame["episode_id"].to_list()) == sorted(val_episodes)
    assert set(frame["split"]) <= {"val"}


def test_feature_selection_by_profile_group_and_name(pack):
    p = open_pack(pack)
    _, schema, profiles = reference()
    assert p.feature_names("all") == schema.names
    assert p.feature_names("minimal") == profiles["minimal"] == schema.names[:27 + len(LIFECYCLE)]
    assert p.feature_names("standard") == profiles["standard"]
    assert p.feature_names("per_class") == schema.groups()["per_class"]
    assert p.feature_names(["sharpness_max", "base", "epoch"]) == ["sharpness_max", *schema.groups()["base"]]
    lacking = len(set(profiles["research"]) - set(schema.names))
    with pytest.raises(PackError, match=f"profile 'research' needs {lacking} features this pack lacks"):
        p.feature_names("research")
    with pytest.raises(PackError, match="'sharpness' is not a profile .* a group .* or a feature of"):
        p.feature_names(["sharpness"])


def test_tensors_of_a_profile_match_the_columns(pack):
    p = open_pack(pack)
    x, actions, mask, names = p.tensors(features="standard", split="test")
    table = p.steps(split="test", columns=names)
    assert x.shape == (table.num_rows, len(reference()[2]["standard"])) and mask.shape == (table.num_rows, 8)
    for j, name in enumerate(names):
        column = table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
        nulls = np.asarray(table.column(name).is_null())
        np.testing.assert_array_equal(x.numpy()[~nulls, j], column[~nulls])
        assert np.all(x.numpy()[nulls, j] == 0)


def test_normalisation_uses_train_statistics_recomputed_by_duckdb(pack):
    p = open_pack(pack)
    names = ["val_loss", "grad_norm_conv1", "epoch"]
    x = p.tensors(features=names, split="val", normalize=True).features.numpy()
    files = read_manifest(pack).files_of("steps", ["train"])
    train = "[" + ", ".join(f"'{pack / f.path}'" for f in files) + "]"
    raw = p.steps(split="val", columns=names)
    assert raw.num_rows > 0
    for j, name in enumerate(names):
        c = f'"{name}"::DOUBLE'
        mean, std = duckdb.sql(f"SELECT avg({c}), stddev_pop({c}) FROM read_parquet({train}) "
                               f"WHERE isfinite({c})").fetchall()[0]
        values = raw.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        nulls = np.asarray(raw.column(name).is_null())
        finite = np.isfinite(values) & ~nulls
        np.testing.assert_allclose(x[finite, j], (values[finite] - mean) / std, rtol=1e-5, atol=1e-5)
        assert np.all(x[nulls, j] == 0)
        assert np.array_equal(np.isnan(x[:, j]), np.isnan(values) & ~nulls)


def test_normalize_choices(pack):
    p = open_pack(pack)
    whole = p.tensors(features=["val_loss"], normalize="all").features
    assert abs(float(whole[np.isfinite(whole.numpy())].mean())) < 0.5
    with pytest.raises(PackError, match="normalize: 'everything'"):
        p.tensors(normalize="everything")


def test_tensors_for_some_episodes(pack):
    x, actions, _, _ = open_pack(pack).tensors(features="minimal", episodes=["ep-0002", "ep-0007"])
    assert x.shape == (10, len(MINIMAL)) and actions.shape == (10,)


def test_a_damaged_file_is_named(copy):
    entry = next(f for f in read_manifest(copy).files if f.table == "steps")
    path = copy / entry.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PackError, match=f"{entry.path}: sha256 does not match manifest.json"):
        open_pack(copy).steps()
    with pytest.raises(PackError, match="sha256 does not match"):
        open_pack(copy).duckdb()
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(PackError, match=f"{entry.path}: {len(data) - 10} bytes but manifest.json says"):
        open_pack(copy, verify=False).tensors()


def test_a_missing_file_is_named(copy):
    entry = read_manifest(copy).files_of("episodes")[0]
    (copy / entry.path).unlink()
    with pytest.raises(PackError, match=f"{entry.path}: listed in manifest.json but missing"):
        open_pack(copy).episodes()
    open_pack(copy).steps()  # the other table is still readable


def test_a_file_not_in_the_manifest_is_never_read(copy):
    entry = read_manifest(copy).files_of("steps", ["train"])[0]
    stray = (copy / entry.path).with_name("part-999999-stray.parquet")
    shutil.copy(copy / entry.path, stray)
    p = open_pack(copy)
    expected = sum(len(s) for _, s in EPISODES)
    assert p.steps().num_rows == expected
    assert p.lazy().collect().height == expected
    assert p.duckdb().sql("SELECT count(*) FROM steps").fetchall() == [(expected,)]
    assert p.tensors().features.shape[0] == expected
    assert pq.read_metadata(stray).num_rows == entry.rows  # a real data file, simply not committed


def test_pack_reads_from_any_working_directory(pack, tmp_path, monkeypatch):
    monkeypatch.chdir(pack.parent)
    con = open_pack("pack").duckdb()
    monkeypatch.chdir(tmp_path)
    assert con.sql("SELECT count(*) FROM steps").fetchall() == [(len(EPISODES) * 5,)]


def test_a_folder_that_looks_like_a_partition_does_not_confuse_duckdb(pack, tmp_path):
    odd = shutil.copytree(pack, tmp_path / "run=3" / "pack", symlinks=True)
    con = open_pack(odd).duckdb()
    rows = con.sql("SELECT split, count(*) FROM steps GROUP BY split ORDER BY split").fetchall()
    expected = sorted((s, n.steps) for s, n in read_manifest(odd).split_stats.items() if n.steps)
    assert rows == expected


def test_an_open_connection_reads_its_commit_while_a_writer_commits_and_compacts(tmp_path):
    """A DuckDB connection made before a compaction (which drops the small files from the next
    version) still reads its own commit: the views read through the opened version folder."""
    path = tmp_path / "pack"
    first, more = EPISODES[:6], make_episodes(10, 4, steps=5)
    write_pack(path, first, commit_every=1)
    config, schema, _ = reference()
    writer = PackWriter.open_append(path, config, schema)
    for episode, steps in more:
        writer.add_episode(episode, steps)
        writer.commit()
    pack = open_pack(path)
    con, lazy = pack.duckdb(), pack.lazy()
    writer.compact()
    assert {f.path for f in pack.manifest.files} - {f.path for f in writer.manifest.files}, "nothing superseded"
    rows = sum(len(s) for _, s in [*first, *more])
    assert con.sql("SELECT count(*) FROM steps").fetchall() == [(rows,)]
    assert lazy.collect().height == rows
    writer.close()


def test_a_file_of_another_profile_is_refused_even_with_a_correct_manifest_entry(copy, tmp_path):
    """A minimal pack's file in a diagnostic pack would read its extra features as nulls (zeros in
    tensors): every reader refuses it, naming the file and the columns it lacks."""
    write_pack(tmp_path / "minimal", make_episodes(0, 10, steps=5, profile="minimal"), commit_every=4,
               profile="minimal", splits={"train": 0.6, "val": 0.2, "test": 0.2})
    manifest = json.loads((copy / "manifest.json").read_text())
    other = json.loads((tmp_path / "minimal" / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["table"] == "steps")
    twin = next(f for f in other["files"] if f["table"] == "steps")  # the same episodes, written alike
    assert (twin["split"], twin["rows"]) == (entry["split"], entry["rows"])
    shutil.copy(tmp_path / "minimal" / twin["path"], copy / entry["path"])
    entry.update(bytes=twin["bytes"], sha256=twin["sha256"], rows=twin["rows"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    lacking = len(reference()[1]) - len(reference("minimal")[1])
    for read in (lambda p: p.steps(), lambda p: p.tensors(), lambda p: p.duckdb(), lambda p: p.lazy()):
        with pytest.raises(PackError, match=f"{entry['path']}: lacks {lacking} column"):
            read(open_pack(copy))
    problems = validate_pack(copy)
    assert len(problems) == 1 and f"lacks {lacking} column(s)" in problems[0]


def test_a_footer_that_does_not_decode_is_a_clean_error_without_verify(copy):
    """Found by the long fuzz run: a flipped byte in a column name of the footer made pyarrow raise
    UnicodeDecodeError, which escaped open_pack(verify=False) as a traceback."""
    entry = next(f for f in read_manifest(copy).files if f.table == "steps")
    path = copy / entry.path
    data = bytearray(path.read_bytes())
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    at = data.index(b"episode_id", footer)  # the schema's name for the first column
    data[at] = 0xE5  # a UTF-8 lead byte without its continuation
    path.write_bytes(bytes(data))
    with pytest.raises(PackError, match=f"{entry.path}: not readable as Parquet"):
        open_pack(copy, verify=False).steps()
    assert any(entry.path in p for p in validate_pack(copy))


def test_masks_of_another_action_vocabulary_are_refused(copy):
    """Found by the long fuzz run: an action dropped from manifest.json's list made tensors() fail with
    numpy's reshape error; validate now names it too (labels outside the list would vanish)."""
    manifest = json.loads((copy / "manifest.json").read_text())
    dropped = manifest["actions"].pop()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match=f"but manifest.json lists {len(manifest['actions'])} actions"):
        open_pack(copy).tensors()
    problems = validate_pack(copy)
    assert any(f"action_mask has [{len(manifest['actions']) + 1}] entries per step" in p for p in problems)
    steps = open_pack(copy, verify=False).steps(columns=["action"]).column("action").to_pylist()
    assert (dropped in steps) == any(f"action {dropped!r} is not one of" in p for p in problems)
