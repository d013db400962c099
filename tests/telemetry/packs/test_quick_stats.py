"""Quick stats: kept while writing, they must equal what DuckDB recomputes from the committed files,
and merging stats of parts must equal the stats of the whole (so parallel writers combine exactly)."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.packs import make_episodes, write_pack

from telemetry.packs.manifest import read_manifest
from telemetry.packs.quick_stats import ColumnStats, QuickStats, merge_all


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "pack"
    write_pack(path, make_episodes(0, 12, steps=6), commit_every=5)
    return path


def _files(pack, table: str, split: str | None = None) -> str:
    entries = read_manifest(pack).files_of(table, None if split is None else [split])
    return "[" + ", ".join(f"'{pack / e.path}'" for e in entries) + "]"


def _duckdb_columns(pack, columns: list[str], split: str | None) -> dict[str, tuple]:
    """count, nulls, non-finite, then min / max / mean / population std of the finite values."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE steps AS SELECT * FROM read_parquet({_files(pack, 'steps', split)})")
    out = {}
    for column in columns:
        c = f'"{column}"::DOUBLE'
        f = f"CASE WHEN isfinite({c}) THEN {c} END"
        out[column] = con.sql(f"SELECT count({c}), count(*) - count({c}), count({c}) - count({f}), "
                              f"min({f}), max({f}), avg({f}), stddev_pop({f}) FROM steps").fetchall()[0]
    return out


@pytest.mark.parametrize("split", [None, "train"])
def test_column_stats_equal_duckdb_recomputation(pack, split):
    manifest = read_manifest(pack)
    stats = manifest.quick_stats if split is None else manifest.split_stats[split]
    assert len(stats.columns) == len(manifest.feature_schema.features) + 7  # + the numeric decision columns
    recomputed = _duckdb_columns(pack, list(stats.columns), split)
    assert any(s.nonfinite_count for s in stats.columns.values())
    assert any(s.null_count for s in stats.columns.values())
    for name, s in stats.columns.items():
        count, nulls, nonfinite, lo, hi, mean, std = recomputed[name]
        assert (s.count, s.null_count, s.nonfinite_count) == (count, nulls, nonfinite), name
        assert (s.min, s.max) == (lo, hi), name
        if mean is None:
            assert s.mean is None and s.std is None, name
            continue
        assert s.mean == pytest.approx(mean, rel=1e-9, abs=1e-12), name
        assert s.std == pytest.approx(std, rel=1e-6, abs=1e-9), name


def test_counts_actions_accuracy_and_seeds_equal_duckdb(pack):
    q = read_manifest(pack).quick_stats
    steps, episodes = _files(pack, "steps"), _files(pack, "episodes")
    assert q.steps == duckdb.sql(f"SELECT count(*) FROM read_parquet({steps})").fetchall()[0][0]
    assert q.episodes == duckdb.sql(f"SELECT count(*) FROM read_parquet({episodes})").fetchall()[0][0]
    actions = dict(duckdb.sql(f"SELECT action, count(*) FROM read_parquet({steps}) "
                              "WHERE action IS NOT NULL GROUP BY action").fetchall())
    assert q.action_distribution == actions
    lo, hi = duckdb.sql("SELECT min(final_accuracy), max(final_accuracy) "
                        f"FROM read_parquet({episodes})").fetchall()[0]
    assert q.accuracy_range == [lo, hi]
    seeds, kept = duckdb.sql(f"""SELECT count(*), count(*) FILTER (WHERE lower(s.outcome) = 'fossilized')
        FROM (SELECT unnest(seed_outcomes) AS s FROM read_parquet({episodes}))""").fetchall()[0]
    assert (q.seeds, q.seeds_fossilized) == (seeds, kept)
    assert q.seed_success_rate == pytest.approx(kept / seeds)


def test_whole_pack_stats_are_the_merge_of_the_splits(pack):
    manifest = read_manifest(pack)
    merged = merge_all(manifest.split_stats.values())
    assert merged.steps == manifest.quick_stats.steps
    assert merged.action_distribution == manifest.quick_stats.action_distribution
    for name, s in merged.columns.items():
        whole = manifest.quick_stats.columns[name]
        assert (s.count, s.null_count, s.min, s.max) == (whole.count, whole.null_count, whole.min, whole.max)
        assert s.mean == whole.mean or s.mean == pytest.approx(whole.mean, rel=1e-12, abs=1e-12), name


def _reference(values: np.ndarray) -> tuple[int, float, float, float, float]:
    finite = values[np.isfinite(values)].astype(np.float64)
    if not len(finite):
        return 0, math.nan, math.nan, math.nan, math.nan
    return len(finite), finite.min(), finite.max(), finite.mean(), finite.std()


floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(floats32, st.none()), min_size=0, max_size=60), st.integers(0, 60))
def test_chan_merge_of_chunks_equals_the_whole(values, cut):
    array = pa.array(values, pa.float32())
    whole = ColumnStats.of(array)
    merged = ColumnStats.of(array.slice(0, cut)).merge(ColumnStats.of(array.slice(cut)))
    present = np.array([v for v in values if v is not None], dtype=np.float32)
    n, lo, hi, mean, std = _reference(present)
    for s in (whole, merged):
        assert (s.count, s.null_count) == (len(present), len(values) - len(present))
        assert s.finite_count == n
        if n:
            assert (s.min, s.max) == (lo, hi)
            scale = max(1.0, abs(lo), abs(hi))
            assert s.mean == pytest.approx(mean, rel=1e-9, abs=1e-12 * scale)
            assert s.std == pytest.approx(std, rel=1e-6, abs=1e-9 * scale)
        else:
            assert s.mean is None and s.std is None and s.min is None


def test_float32_moments_survive_extreme_values():
    big = np.array([3.0e38, -3.0e38, 1.0, 2.0], dtype=np.float32)
    stats = ColumnStats.of(pa.array(big))
    assert math.isfinite(stats.std) and stats.std == pytest.approx(big.astype(np.float64).std(), rel=1e-9)
    offset = np.float32(1e6) + np.arange(1000, dtype=np.float32) * np.float32(0.25)
    assert ColumnStats.of(pa.array(offset)).std == pytest.approx(offset.astype(np.float64).std(), rel=1e-7)


def test_integer_columns_are_summarised_exactly():
    stats = ColumnStats.of(pa.array([2**40, 2**40 + 2, None], pa.int64()))
    assert (stats.count, stats.null_count, stats.min, stats.max) == (2, 1, 2**40, 2**40 + 2)
    assert stats.mean == 2**40 + 1 and stats.std == 1.0


def test_quick_stats_round_trip_through_json():
    stats = QuickStats(steps=3, action_distribution={"WAIT": 3}, final_accuracy_min=1.0,
                       final_accuracy_max=2.0, seeds=4, seeds_fossilized=1,
                       columns={"x": ColumnStats.of(pa.array([1.0, 2.0]))})
    data = stats.model_dump(mode="json")
    assert data["accuracy_range"] == [1.0, 2.0] and data["seed_success_rate"] == 0.25
    assert data["columns"]["x"]["std"] == 0.5
    assert QuickStats.model_validate(data) == stats


def test_infinities_of_both_signs_are_counted_without_a_numpy_warning():
    """A diverged run writes +Inf and -Inf; summarising them must not print warnings on every row group."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = ColumnStats.of(pa.array([np.inf, -np.inf, 1.0, 3.0, np.nan], pa.float32()))
    assert (stats.count, stats.nonfinite_count, stats.min, stats.max, stats.mean) == (5, 3, 1.0, 3.0, 2.0)
