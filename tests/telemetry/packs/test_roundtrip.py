"""What goes into a pack comes out bit for bit (NaN, +-Inf, -0.0, subnormals, nulls, nested
decision columns) through every reader: the project's Arrow, polars, DuckDB and torch surfaces, and
plain DuckDB, polars and pyarrow.dataset with no project code at all."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from support.packs import (
    assert_bit_equal,
    expected_steps,
    float_bits,
    make_episodes,
    reference,
    sort,
    to_canonical,
    write_pack,
)

from telemetry.packs.reader import NO_ACTION, open_pack
from telemetry.packs.tables import DEFAULT_ACTIONS, episodes_schema, steps_schema
from telemetry.packs.writer import PackWriter

EPISODES = make_episodes(0, 10, steps=7)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("roundtrip") / "pack"
    write_pack(path, EPISODES[:6], commit_every=2)
    config, schema, _ = reference()
    with PackWriter.open_append(path, config, schema) as writer:  # a second session, Arrow input
        rest = EPISODES[6:]
        steps = expected_steps(rest)
        episodes = pa.Table.from_pylist([e for e, _ in rest], schema=episodes_schema())
        writer.add_episodes(episodes, steps)
    return path


def _arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def _schema() -> pa.Schema:
    return steps_schema(reference()[1])


def test_arrow_reader_is_bit_exact(pack):
    steps = open_pack(pack).steps()
    assert steps.column_names[-1] == "split"
    assert_bit_equal(sort(steps.drop_columns(["split"])), expected_steps(EPISODES))


def test_episodes_table_round_trips(pack):
    expected = pa.Table.from_pylist([e for e, _ in EPISODES], schema=episodes_schema())
    episodes = open_pack(pack).episodes().drop_columns(["split"]).sort_by("episode_id")
    assert_bit_equal(episodes.drop_columns(["episode_index"]), expected.drop_columns(["episode_index"]))
    assert sorted(episodes.column("episode_index").to_pylist()) == list(range(len(EPISODES)))


def test_polars_reader_is_bit_exact(pack):
    frame = open_pack(pack).lazy().collect()
    assert set(frame["split"].unique()) <= {"train", "val", "test"}
    assert_bit_equal(sort(to_canonical(frame.to_arrow(), _schema())), expected_steps(EPISODES))


def test_duckdb_views_are_bit_exact(pack):
    con = open_pack(pack).duckdb()
    steps = _arrow(con.sql("SELECT * FROM steps"))
    assert_bit_equal(sort(to_canonical(steps, _schema())), expected_steps(EPISODES))
    decisions = con.sql("SELECT count(*) FROM decisions").fetchall()[0][0]
    wait_or_null = sum(1 for _, rows in EPISODES for r in rows if r["action"] in ("WAIT", None))
    assert decisions == sum(len(rows) for _, rows in EPISODES) - wait_or_null


def test_tensors_are_bit_exact(pack):
    names = reference()[1].names
    x, actions, mask, got_names = open_pack(pack).tensors()
    assert got_names == names and x.dtype.is_floating_point and x.is_contiguous()
    order = _order(open_pack(pack).steps(columns=["episode_id", "step"]))
    expected = expected_steps(EPISODES)
    matrix = x.numpy()[order]
    for j, name in enumerate(names):
        column = expected.column(name).cast(pa.float32())
        valid, bits = float_bits(column)
        got = matrix[:, j].view(np.uint32)
        assert np.array_equal(got[valid], bits[valid]), name
        assert np.all(matrix[~valid, j] == 0) and not np.signbit(matrix[~valid, j]).any(), name
    vocab = {a: i for i, a in enumerate(DEFAULT_ACTIONS)}
    labels = [vocab.get(a, NO_ACTION) for a in expected.column("action").to_pylist()]
    assert actions.numpy()[order].tolist() == labels
    everything = [True] * len(DEFAULT_ACTIONS)
    masks = [m if m is not None else everything for m in expected.column("action_mask").to_pylist()]
    assert mask.numpy()[order].tolist() == masks


def _order(identity: pa.Table) -> np.ndarray:
    """Row permutation that sorts a reader's output by (episode_id, step)."""
    ids, steps = identity.column("episode_id").to_pylist(), identity.column("step").to_pylist()
    keys = list(zip(ids, steps, strict=True))
    return np.array(sorted(range(len(keys)), key=keys.__getitem__))


def test_plain_duckdb_reads_the_pack(pack):
    sql = f"SELECT * FROM read_parquet('{pack}/steps/**/*.parquet', hive_partitioning=true)"
    steps = _arrow(duckdb.sql(sql))
    assert_bit_equal(sort(to_canonical(steps, _schema())), expected_steps(EPISODES))
    splits = duckdb.sql(f"SELECT DISTINCT split FROM read_parquet('{pack}/episodes/**/*.parquet', "
                        "hive_partitioning=true)").fetchall()
    assert {s for (s,) in splits} <= {"train", "val", "test"}


def test_plain_polars_reads_the_pack(pack):
    frame = pl.scan_parquet(f"{pack}/steps/**/*.parquet", hive_partitioning=True).collect()
    assert "split" in frame.columns
    assert_bit_equal(sort(to_canonical(frame.to_arrow(), _schema())), expected_steps(EPISODES))


def test_plain_pyarrow_dataset_reads_the_pack(pack):
    table = ds.dataset(pack / "steps", format="parquet", partitioning="hive").to_table()
    assert_bit_equal(sort(to_canonical(table, _schema())), expected_steps(EPISODES))


def test_split_of_every_reader_agrees(pack):
    arrow = open_pack(pack).steps(columns=["episode_id", "split"])
    ours = set(zip(arrow.column(0).to_pylist(), arrow.column(1).to_pylist(), strict=True))
    plain = duckdb.sql(f"SELECT DISTINCT episode_id, split FROM read_parquet('{pack}/steps/**/*.parquet', "
                       "hive_partitioning=true)").fetchall()
    assert ours == set(plain)
    assert len({e for e, _ in ours}) == len(ours)  # one split per episode
