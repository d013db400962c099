"""Every column of a pack described in its manifest (and so its JSON Schema): name, table, type as the
files store it, unit, description, and the code tables a reader needs without this project's source."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from telemetry.errors import PackError
from telemetry.packs import columns as columns_module
from telemetry.packs.columns import column_entries, type_name
from telemetry.packs.manifest import Manifest, packaged_json_schema, read_manifest
from telemetry.packs.tables import SPLIT_COLUMN
from telemetry.seed_status import SeedStage


def test_every_column_of_both_tables_is_described_in_order_with_the_stored_type(described_pack):
    manifest = read_manifest(described_pack)
    for table in ("steps", "episodes"):
        described = [c for c in manifest.columns if c.table == table]
        stored = pq.read_schema(described_pack / manifest.files_of(table)[0].path)  # what the file says
        assert [c.name for c in described] == [*stored.names, SPLIT_COLUMN]
        for column in described[:-1]:
            assert column.dtype == type_name(stored.field(column.name).type)
            assert column.unit and len(column.description) >= 10, column.name
    steps = {c.name: c for c in manifest.columns if c.table == "steps"}
    features = {f.name: f for f in manifest.feature_schema.features}
    assert all(steps[n].group == f.group and steps[n].description == f.description for n, f in features.items())
    assert steps["action_mask"].dtype == "list<bool>"
    assert steps["why_not_alternatives"].dtype == "list<struct<action: string, reason: string>>"


def test_coded_columns_carry_their_code_tables(described_pack):
    manifest = read_manifest(described_pack)
    steps = {c.name: c for c in manifest.columns if c.table == "steps"}
    assert steps["seed_stage"].codes == {str(int(s)): s.name for s in SeedStage}
    assert list(steps["action_mask"].codes.values()) == manifest.actions
    assert list(steps["action_mask"].codes) == [str(i) for i in range(len(manifest.actions))]
    assert steps["action"].codes == {a: f"label index {i}" for i, a in enumerate(manifest.actions)}
    assert steps["best_action"].codes == steps["action"].codes
    assert set(steps[SPLIT_COLUMN].codes) == set(manifest.splits)
    assert steps["val_loss"].codes is None


def test_the_json_schema_covers_the_column_descriptions(described_pack):
    schema = json.loads(packaged_json_schema())
    entry = schema["$defs"]["ColumnEntry"]
    assert {"name", "table", "dtype", "unit", "description", "group", "codes"} <= set(entry["properties"])
    assert schema["properties"]["columns"]["items"] == {"$ref": "#/$defs/ColumnEntry"}
    document = json.loads((described_pack / "manifest.json").read_text())
    assert len(document["columns"]) == len(read_manifest(described_pack).columns)


def test_columns_that_disagree_with_the_schemas_are_refused(described_pack):
    document = json.loads((described_pack / "manifest.json").read_text())
    document["columns"] = document["columns"][1:]
    with pytest.raises(ValueError, match="columns do not describe the steps table's columns in order"):
        Manifest.model_validate(document)


def test_a_fixed_column_without_a_description_cannot_make_a_pack(described_pack, monkeypatch):
    manifest = read_manifest(described_pack)
    monkeypatch.delitem(columns_module.STEP_COLUMNS, "reward_cost")
    schemas = {t: manifest.arrow_schema(t) for t in ("steps", "episodes")}
    with pytest.raises(PackError, match="column 'reward_cost' of the steps table has no description"):
        column_entries(schemas, manifest.feature_schema.features, manifest.actions, manifest.splits)
