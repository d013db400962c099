"""Readers: filters and projections, feature selection by profile / group / name, normalisation
against independently recomputed statistics, and damaged, missing or unlisted files."""

from __future__ import annotations

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
