"""Plain tools on a pack: the README's recipe for each (DuckDB, polars, pyarrow, pandas, Hugging Face
datasets, a torch DataLoader, Spark) runs as written and reads exactly the rows the project's reader
reads; a glob over the whole pack fails naming the guard file instead of mixing the two tables."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pytest
from support import REPO

from telemetry.packs.card import GUARD_NAME
from telemetry.packs.manifest import read_manifest
from telemetry.packs.reader import open_pack

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A private cache: Hugging Face keys a local folder's cache by its name and data-file patterns, so a
# shared ~/.cache could hand back a pack of the same name written with another schema.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="esper-hf-cache-"))


def recipes() -> dict[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# recipe: (\w+)\n.*?)```", text, flags=re.S)
    return {name: code for code, name in blocks}


def run_recipe(name: str, pack: Path) -> dict[str, Any]:
    code = recipes()[name]
    assert 'pack = "runs/demo"' in code
    namespace: dict[str, Any] = {}
    exec(compile(code.replace('"runs/demo"', repr(str(pack))), f"README.md recipe {name}", "exec"), namespace)
    return namespace


def _ids(pack: Path, split: str | None = None) -> list[str]:
    return sorted(open_pack(pack).steps(split=split, columns=["episode_id"]).column(0).to_pylist())


def test_the_readme_has_a_recipe_for_each_tool():
    assert set(recipes()) == {"duckdb", "polars", "pyarrow", "pandas", "datasets", "torch", "spark"}


def test_duckdb_recipe(described_pack):
    ns = run_recipe("duckdb", described_pack)
    manifest = read_manifest(described_pack)
    assert ns["per_split"] == {s: st.steps for s, st in manifest.split_stats.items()}
    episodes = ns["con"].sql("SELECT count(*), count(DISTINCT split) FROM episodes").fetchall()
    assert episodes == [(manifest.quick_stats.episodes, len(manifest.splits))]


def test_polars_recipe_keeps_the_split_column(described_pack):
    ns = run_recipe("polars", described_pack)
    assert ns["train"]["split"].unique().to_list() == ["train"]
    assert sorted(ns["train"]["episode_id"].to_list()) == _ids(described_pack, "train")


def test_pyarrow_and_pandas_recipes(described_pack):
    table = run_recipe("pyarrow", described_pack)["steps"]
    assert sorted(table.column("episode_id").to_pylist()) == _ids(described_pack)
    frame = run_recipe("pandas", described_pack)["steps"]
    manifest = read_manifest(described_pack)
    assert Counter(frame["split"].astype(str)) == {s: st.steps for s, st in manifest.split_stats.items()}


def test_datasets_recipe(described_pack):
    pytest.importorskip("datasets", reason="Hugging Face datasets (the dev extra) is not installed")
    ns = run_recipe("datasets", described_pack)
    manifest = read_manifest(described_pack)
    assert {k: v.num_rows for k, v in ns["steps"].items()} == {
        "train": manifest.split_stats["train"].steps, "validation": manifest.split_stats["val"].steps,
        "test": manifest.split_stats["test"].steps}
    assert sorted(ns["episodes"]["validation"]["episode_id"]) == sorted(
        open_pack(described_pack).episodes(split="val", columns=["episode_id"]).column(0).to_pylist())


def test_torch_recipe_survives_the_nullable_columns_and_matches_tensors(described_pack):
    pytest.importorskip("datasets", reason="Hugging Face datasets (the dev extra) is not installed")
    ns = run_recipe("torch", described_pack)
    reference = open_pack(described_pack).tensors(split="train")  # the project's reader, independently
    batch = ns["batch"]
    assert batch["x"].shape == (min(64, len(reference.features)), reference.features.shape[1])
    everything = ns["train"][:]  # every encoded row: the same rows as tensors(), as bit patterns
    rows = sorted(map(bytes, everything["x"].numpy()))
    assert rows == sorted(map(bytes, reference.features.numpy()))
    assert sorted(everything["y"].tolist()) == sorted(reference.actions.tolist())


def test_spark_recipe(described_pack):
    pytest.importorskip("pyspark", reason="pyspark is not installed (it is not a dependency)")
    if shutil.which("java") is None:
        pytest.skip("pyspark needs Java, which is not installed")
    ns = run_recipe("spark", described_pack)
    try:
        counts = {r["split"]: r["count"] for r in ns["steps"].groupBy("split").count().collect()}
        manifest = read_manifest(described_pack)
        assert counts == {s: st.steps for s, st in manifest.split_stats.items()}
        with pytest.raises(Exception, match=GUARD_NAME):  # a recursive read of the whole pack is refused
            ns["spark"].read.option("recursiveFileLookup", "true").parquet(str(described_pack)).count()
    finally:
        ns["spark"].stop()


@pytest.mark.parametrize("copy", ["pack", "link-following copy"])
def test_whole_pack_globs_fail_naming_the_guard(described_pack, tmp_path, copy):
    pack = described_pack if copy == "pack" else Path(shutil.copytree(described_pack, tmp_path / "copy"))
    for pattern in ("**/*.parquet", "*/**/*.parquet", "*/*/*.parquet"):
        with pytest.raises(duckdb.Error, match=GUARD_NAME):
            duckdb.sql(f"SELECT count(*) FROM read_parquet('{pack}/{pattern}', union_by_name=true)").fetchall()
    with pytest.raises(pl.exceptions.PolarsError):  # polars' message names no file, but it refuses
        pl.scan_parquet(f"{pack}/**/*.parquet", hive_partitioning=True, missing_columns="insert",
                        extra_columns="ignore").collect()
    with pytest.raises(Exception, match=GUARD_NAME):
        ds.dataset(pack, format="parquet", partitioning="hive").to_table()
    pd = pytest.importorskip("pandas")
    with pytest.raises(Exception, match=GUARD_NAME):
        pd.read_parquet(pack)
    # while one table's glob reads it exactly, once
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{pack}/steps/**/*.parquet')").fetchall()[0][0]
    assert rows == read_manifest(pack).quick_stats.steps
    assert np.array_equal(sorted(pl.scan_parquet(f"{pack}/episodes/**/*.parquet").collect()["episode_id"]),
                          sorted(open_pack(pack).episodes(columns=["episode_id"]).column(0).to_pylist()))
