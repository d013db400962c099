"""Properties over generated inputs, where the example tests only cover the four built-in profiles:

(a) any valid config gives a feature schema of unique, SQL-safe names, base block first, whose Arrow
    schema builds and which DuckDB accepts unquoted;
(b) any rows of such a schema survive PackWriter -> open_pack bit for bit (NaN, +-Inf, -0.0,
    subnormals, nulls, extreme integers);
(c) quick stats merged over chunks equal the stats of the whole, and both equal an independent
    float64 numpy recomputation.

Configs are drawn from the pydantic models' own fields and bounds, so a new config field is either
covered automatically or fails `test_the_config_strategy_covers_every_field` until it is.
"""

from __future__ import annotations

import math
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from support.models import BASE_27, ReferenceCNN
from support.packs import AWKWARD, assert_bit_equal, sort

from telemetry.config import GradientConfig, LifecycleConfig, TelemetryConfig, profile_names
from telemetry.feature_schema import FeatureSchema, build_feature_schema
from telemetry.packs.manifest import decode_schema, encode_schema
from telemetry.packs.quick_stats import ColumnStats, QuickStats, merge_all
from telemetry.packs.reader import open_pack
from telemetry.packs.tables import STEP_IDENTITY, steps_schema
from telemetry.packs.writer import PackWriter
from telemetry.probes.gradient_histogram import HIST_EDGES
from telemetry.probes.registry import GROUP_ORDER
from telemetry.tracker import DiagnosticTracker

HOST = ReferenceCNN(in_channels=3, num_classes=10)
HOST_LAYERS = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc"]  # modules owning parameters directly
SQL_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

# ---- configs drawn from the models' bounds --------------------------------------------------------

SPECIAL: dict[tuple[type[BaseModel], str], st.SearchStrategy[Any]] = {
    (TelemetryConfig, "profile_name"): st.one_of(st.sampled_from(profile_names()), st.text(max_size=12)),
    (GradientConfig, "layers"): st.one_of(
        st.just("all"), st.lists(st.sampled_from(HOST_LAYERS), min_size=1, max_size=len(HOST_LAYERS), unique=True)),
    (GradientConfig, "percentiles"): st.lists(st.integers(0, 100), max_size=8, unique=True),
    (LifecycleConfig, "blueprints"): st.lists(st.sampled_from(["conv", "attention", "norm", "depthwise", "mlp"]),
                                              max_size=5, unique=True),
}


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(m, key, None) is not None:
                out[key] = getattr(m, key)
    return out


def _number(annotation: type, metadata: list[Any]) -> st.SearchStrategy[Any]:
    b = _bounds(metadata)
    if annotation is int:
        lo = b.get("ge", b["gt"] + 1 if "gt" in b else 0)
        hi = b.get("le", b["lt"] - 1 if "lt" in b else lo + 1000)
        return st.integers(lo, hi)
    lo, hi = b.get("ge", b.get("gt", 0.0)), b.get("le", b.get("lt", 1e12))
    return st.floats(lo, hi, exclude_min="gt" in b, exclude_max="lt" in b, allow_nan=False, allow_infinity=False)


def model_strategy(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of every field of `model`, each drawn within its declared type and bounds."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if (model, name) in SPECIAL:
            fields[name] = SPECIAL[(model, name)]
        elif annotation is bool:
            fields[name] = st.booleans()
        elif annotation in (int, float):
            fields[name] = _number(annotation, field.metadata)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields[name] = model_strategy(annotation)
        else:
            raise TypeError(f"{model.__name__}.{name}: no strategy for {annotation}; add one to SPECIAL")
    return st.fixed_dictionaries(fields)


configs = model_strategy(TelemetryConfig).map(TelemetryConfig.model_validate)


@settings(max_examples=10, deadline=None)
@given(model_strategy(TelemetryConfig))
def test_the_config_strategy_covers_every_field(drawn: dict[str, Any]) -> None:
    """Every field is drawn (not left at its default) and every draw is valid, so the properties below
    range over the whole model, within its bounds."""
    assert set(drawn) == set(TelemetryConfig.model_fields)
    assert set(drawn["gradients"]) == set(GradientConfig.model_fields)
    TelemetryConfig.model_validate(drawn)


# ---- (a) schemas ---------------------------------------------------------------------------------



def expected_gradient_features(config: TelemetryConfig) -> int:
    """The gradient group's size, counted from the config alone (3 step-wide + per-layer features)."""
    g = config.gradients
    if not g.enabled:
        return 0
    layers = len(HOST_LAYERS) if g.layers == "all" else len(g.layers)
    per_layer = (2 * g.track_norm + g.track_std + len(g.percentiles) + g.detect_vanishing + g.detect_exploding
                 + (len(HIST_EDGES) + 1) * g.full_histogram)
    return 3 + layers * per_layer


@settings(max_examples=25, deadline=None, suppress_health_check=SLOW)
@given(configs)
def test_any_valid_config_yields_a_sound_schema(config: TelemetryConfig) -> None:
    """Unique SQL-safe names, the 27 base features first, groups in order, an Arrow schema that builds,
    round-trips through the manifest's encoding and is queryable by DuckDB without quoting."""
    schema = build_feature_schema(config, HOST, num_classes=10)
    names = schema.names
    assert len(set(names)) == len(names)
    assert all(SQL_IDENTIFIER.match(n) for n in names), [n for n in names if not SQL_IDENTIFIER.match(n)]
    assert names[:27] == BASE_27 and [s.group for s in schema.specs[:27]] == ["base"] * 27
    order = [GROUP_ORDER.index(s.group) for s in schema.specs]
    assert order == sorted(order)
    assert len(schema.groups().get("gradients", [])) == expected_gradient_features(config)
    arrow = steps_schema(schema)
    assert arrow.names[len(STEP_IDENTITY):len(STEP_IDENTITY) + len(names)] == names
    assert decode_schema(encode_schema(arrow)).equals(arrow)
    con = duckdb.connect()
    con.register("t", arrow.empty_table())
    assert [d[0] for d in con.execute(f"SELECT {', '.join(names)} FROM t").description] == names
    tracker = DiagnosticTracker(HOST, config, num_classes=10)
    try:
        assert tracker.schema.names == names  # the rows a tracker emits are exactly the declared schema
    finally:
        tracker.close()


# ---- (b) rows round-trip bit for bit -------------------------------------------------------------

SMALL_CONFIGS = configs.filter(lambda c: not (c.per_class.enabled and c.per_class.track_confusion))


def values_for(spec_dtype: str) -> st.SearchStrategy[Any]:
    if spec_dtype == "int32":
        return st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))
    if spec_dtype == "int64":
        return st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
    return st.one_of(st.none(), st.floats(width=32), st.sampled_from([v for v in AWKWARD if v is not None]))


def float_bits32(value: float) -> bytes:
    return struct.pack("<f", value)


@settings(max_examples=20, deadline=None, suppress_health_check=SLOW)
@given(SMALL_CONFIGS, st.data())
def test_any_rows_survive_the_pack_bit_for_bit(config: TelemetryConfig, data: st.DataObject) -> None:
    """Write drawn rows with PackWriter, read them with open_pack: every float's bits (NaN payload,
    sign of zero, subnormals) and every integer and null must come back unchanged."""
    schema = build_feature_schema(config, HOST, num_classes=10)
    episodes = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3), label="steps per episode")
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for e, n in enumerate(episodes):
        steps = [{s.name: data.draw(values_for(s.dtype)) for s in schema.specs} for _ in range(n)]
        rows.append((f"ep-{e}", steps))
    with tempfile.TemporaryDirectory() as tmp:
        pack = Path(tmp) / "pack"
        with PackWriter.create(pack, config, schema) as writer:
            for episode_id, steps in rows:
                writer.add_episode({"episode_id": episode_id}, steps)
        read = sort(open_pack(pack).steps().drop_columns(["split"]))
    assert_bit_equal(read, _reference_table(schema, rows))
    _assert_equal_to_python_values(read, rows)


def _reference_table(schema: FeatureSchema, rows: list[tuple[str, list[dict[str, Any]]]]) -> pa.Table:
    """The same rows converted by pyarrow directly (no writer, no Parquet) into the steps schema."""
    flat = [{**row, "episode_id": e, "step": i} for e, steps in rows for i, row in enumerate(steps)]
    return sort(pa.Table.from_pylist(flat, schema=steps_schema(schema)))


def _assert_equal_to_python_values(read: pa.Table, rows: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Independent of pyarrow's conversion: each value against the Python value drawn (float32 bits)."""
    by_key = {(e, i): row for e, steps in rows for i, row in enumerate(steps)}
    for got in read.to_pylist():
        drawn = by_key.pop((got["episode_id"], got["step"]))
        for name, value in drawn.items():
            back = got[name]
            if value is None or back is None:
                assert value is back is None, name
            elif isinstance(value, int):
                assert back == value, name
            elif math.isnan(value):
                assert math.isnan(back), name
            else:
                assert float_bits32(back) == float_bits32(value), (name, value, back)
    assert not by_key, "rows went missing"


# ---- (c) quick stats merge exactly ---------------------------------------------------------------

NUMERIC = {"f": pa.float32(), "g": pa.float32(), "i": pa.int32(), "j": pa.int64()}
ACTIONS = ["WAIT", "CULL", "FOSSILIZE"]


@st.composite
def step_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 40))
    columns = {
        "action": draw(st.lists(st.one_of(st.none(), st.sampled_from(ACTIONS)), min_size=n, max_size=n)),
        "f": draw(st.lists(st.one_of(st.none(), st.floats(width=32)), min_size=n, max_size=n)),
        "g": draw(st.lists(st.one_of(st.none(), st.floats(-1e3, 1e3, width=32)), min_size=n, max_size=n)),
        "i": draw(st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), min_size=n, max_size=n)),
        "j": draw(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n)),
    }
    return pa.table({k: pa.array(v, type=NUMERIC.get(k, pa.string())) for k, v in columns.items()})


def _reference_column(column: pa.ChunkedArray) -> dict[str, Any]:
    """float64 numpy recomputation: counts over non-null values, moments over the finite ones."""
    values = [v for v in column.to_pylist() if v is not None]
    x = np.array(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    return {"count": len(values), "null_count": len(column) - len(values),
            "nonfinite_count": len(values) - len(finite),
            "min": float(finite.min()) if len(finite) else None, "max": float(finite.max()) if len(finite) else None,
            "mean": float(finite.mean()) if len(finite) else None, "std": float(finite.std()) if len(finite) else None,
            "scale": max(1.0, float(np.abs(finite).max())) if len(finite) else 1.0}


def _assert_matches(stats: ColumnStats, ref: dict[str, Any], name: str) -> None:
    assert (stats.count, stats.null_count, stats.nonfinite_count) == (
        ref["count"], ref["null_count"], ref["nonfinite_count"]), name
    assert (stats.min, stats.max) == (ref["min"], ref["max"]), name
    if ref["mean"] is None:
        assert stats.mean is None and stats.std is None, name
        return
    assert stats.mean == pytest.approx(ref["mean"], rel=1e-9, abs=1e-12 * ref["scale"]), name
    assert stats.std == pytest.approx(ref["std"], rel=1e-6, abs=1e-9 * ref["scale"]), name


@settings(max_examples=25, deadline=None, suppress_health_check=SLOW)
@given(step_tables(), st.lists(st.integers(0, 40), max_size=4))
def test_merged_quick_stats_equal_the_stats_of_the_whole(table: pa.Table, cuts: list[int]) -> None:
    """Stats of chunks merged (as commits and parallel writers combine them) equal the stats of the
    concatenated rows, and both equal numpy's float64 answer: counts, nulls, min and max exactly."""
    bounds = [0, *sorted(min(c, table.num_rows) for c in cuts), table.num_rows]
    chunks = [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    columns = list(NUMERIC)
    whole = QuickStats.of_steps(table, columns)
    merged = merge_all(QuickStats.of_steps(c, columns) for c in chunks)
    actions = [a for a in table.column("action").to_pylist() if a is not None]
    for stats in (whole, merged):
        assert stats.steps == table.num_rows
        assert stats.action_distribution == {a: actions.count(a) for a in sorted(set(actions))}
        for name in columns:
            _assert_matches(stats.columns[name], _reference_column(table.column(name)), name)
