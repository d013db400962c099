"""Shared by the pack tests: the reference schema, synthetic episodes with awkward values, and
independent ways to compare what went into a pack with what comes out (bit for bit)."""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from support import TESTS  # noqa: F401 - re-exported for subprocess scripts
from support.models import ReferenceCNN
from telemetry.config import TelemetryConfig, load_config
from telemetry.feature_schema import FeatureSchema, build_feature_schema, profile_feature_names
from telemetry.packs.tables import DEFAULT_ACTIONS, steps_schema
from telemetry.packs.writer import PackWriter

AWKWARD = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, None, 3.4028234663852886e38,
           1.401298464324817e-45, -1.1754943508222875e-38]


@functools.cache
def reference(profile: str = "diagnostic") -> tuple[TelemetryConfig, FeatureSchema, dict[str, list[str]]]:
    """Config, feature schema and built-in profiles' names for the reference host with 10 classes."""
    model = ReferenceCNN()
    config = load_config(profile)
    return config, build_feature_schema(config, model, 10), profile_feature_names(model, 10)


def f32(x: float) -> float:
    """A Python float exactly representable as float32 (so the input is the reference, bit for bit)."""
    return float(np.float32(x))


def step_row(schema: FeatureSchema, rng: np.random.Generator, step: int,
             awkward: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for i, spec in enumerate(schema.specs):
        if spec.dtype.startswith("int"):
            row[spec.name] = None if (awkward and (i + step) % 17 == 0) else int(rng.integers(-5, 1000))
        elif awkward and (i + step) % 11 == 0:
            row[spec.name] = AWKWARD[(i + step) % len(AWKWARD)]
        else:
            row[spec.name] = f32(rng.normal(0, 10))
    action = int(rng.integers(0, len(DEFAULT_ACTIONS))) if step % 4 else 0
    row.update(
        action=None if step % 7 == 6 else DEFAULT_ACTIONS[action],
        behaviour_prob=f32(rng.random()),
        action_mask=None if step % 5 == 4 else [bool(b) for b in rng.random(len(DEFAULT_ACTIONS)) < 0.6],
        reward=AWKWARD[step % 4] if awkward and step % 3 == 0 else f32(rng.normal()),
        reward_accuracy=f32(rng.normal()),
        reward_cost=None,
        narrative="plateau → germinate ✓" if step % 2 else "",
        red_flags=["sustained_plateau", "overfitting"][: step % 3],
        opportunities=None if step % 2 else ["slot_available"],
        why_this_action="because",
        why_not_alternatives=[{"action": "CULL", "reason": "no seed"}] if step % 2 else [],
        hindsight_accuracy=f32(50 + step),
        hindsight_epochs=3,
        was_good_decision=None if step % 3 == 2 else bool(step % 2),
        counterfactual=[{"action": "WAIT", "accuracy": f32(51.5)}, {"action": "CULL", "accuracy": None}]
        if step % 4 == 1 else None,
        best_action="WAIT" if step % 4 == 1 else None,
    )
    return row


def episode_row(index: int, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "episode_id": f"ep-{index:04d}",
        "seed": index,
        "scenario": ["plateau", "overfit"][index % 2],
        "scenario_params": '{"lr": 0.01}',
        "epochs": 6,
        "final_accuracy": f32(60 + rng.random() * 30),
        "best_accuracy": f32(90.0),
        "outcome": "successful_intervention" if index % 2 else "no_intervention",
        "trajectory": "plateau -> germinate",
        "key_moments": [{"epoch": 2, "event": "plateau_detected", "detail": None}],
        "seed_outcomes": [{"slot": "slot1", "blueprint": ["conv", "norm"][index % 2],
                           "outcome": ["fossilized", "culled", "FOSSILIZED"][index % 3],
                           "germinated_epoch": 2, "ended_epoch": 5, "improvement": f32(index / 3)}],
        "params_added": 1000 * index,
        "diverged": index % 5 == 0,
    }


def make_episodes(start: int, count: int, steps: int = 6, seed: int = 0,
                  profile: str = "diagnostic") -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    schema = reference(profile)[1]
    rng = np.random.default_rng(seed + start)
    return [(episode_row(i, rng), [step_row(schema, rng, s) for s in range(steps)])
            for i in range(start, start + count)]


def write_pack(path: Path, episodes: list[tuple[dict[str, Any], list[dict[str, Any]]]], commit_every: int = 0,
               profile: str = "diagnostic", **create: Any) -> None:
    config, schema, profiles = reference(profile)
    with PackWriter.create(path, config, schema, profiles=profiles, **create) as writer:
        for i, (episode, steps) in enumerate(episodes, 1):
            writer.add_episode(episode, steps)
            if commit_every and i % commit_every == 0:
                writer.commit()


def expected_steps(episodes: list[tuple[dict[str, Any], list[dict[str, Any]]]],
                   profile: str = "diagnostic") -> pa.Table:
    """The steps table built straight from the Python values by pyarrow (the independent reference)."""
    schema = steps_schema(reference(profile)[1])
    rows = [{**row, "episode_id": ep["episode_id"], "step": i}
            for ep, steps in episodes for i, row in enumerate(steps)]
    return sort(pa.Table.from_pylist(rows, schema=schema))


def sort(table: pa.Table) -> pa.Table:
    return table.sort_by([("episode_id", "ascending"), ("step", "ascending")])


def same(a: Any, b: Any) -> bool:
    """Equality that tells NaN from NaN-with-another-payload and 0.0 from -0.0 (doubles, recursively)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def float_bits(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(validity, raw bits with nulls zeroed): compares floats bit for bit, NaN payloads included."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(array.is_valid())
    width = {pa.float32(): np.uint32, pa.float64(): np.uint64}[array.type]
    raw = np.frombuffer(array.buffers()[1], dtype=width, count=len(array) + array.offset)
    bits = raw[array.offset:].copy()
    bits[~valid] = 0
    return valid, bits


def assert_bit_equal(actual: pa.Table, expected: pa.Table) -> None:
    assert actual.column_names == expected.column_names
    assert actual.num_rows == expected.num_rows
    for name in expected.column_names:
        a, e = actual.column(name), expected.column(name)
        if pa.types.is_floating(e.type):
            (va, ba), (ve, be) = float_bits(a), float_bits(e)
            assert np.array_equal(va, ve), f"{name}: nulls differ"
            assert np.array_equal(ba, be), f"{name}: values differ bit for bit"
        else:
            assert a.type == e.type, f"{name}: {a.type} != {e.type}"
            assert same(a.to_pylist(), e.to_pylist()), f"{name}: values differ"


def read_back(path: Path) -> pa.Table:
    """A pack's steps as the project's Arrow reader returns them, sorted, without the split column."""
    from telemetry.packs.reader import open_pack

    return sort(open_pack(path).steps().drop_columns(["split"]))


def to_canonical(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Another tool's Arrow output (large strings, split column...) cast to the canonical schema."""
    return table.select(schema.names).cast(schema)


# ---- the small pack the storage-fault tests damage ---------------------------------------------------
FAULT_PROFILE = "minimal"  # 27 features: the failure paths are the same as for wide packs, and faster
FAULT_SPLITS = {"train": 0.5, "test": 0.5}
FAULT_EPISODES = make_episodes(0, 6, steps=4, profile=FAULT_PROFILE)  # what the pristine pack holds
FAULT_MORE = make_episodes(6, 3, steps=4, profile=FAULT_PROFILE)  # what a test appends to it


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """The library's `esper` commands in-process: (exit status, stdout, stderr)."""
    from telemetry.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- a pack shaped like a generated one, for what reads a pack as a whole (card, report, explain) ---
DESCRIBED_EPISODES = 30  # with the default 80/10/10 split: 26 train, 2 val, 2 test episodes


Episodes = list[tuple[dict[str, Any], list[dict[str, Any]]]]


def described_episodes(count: int = DESCRIBED_EPISODES, steps: int = 5) -> Episodes:
    """Diagnostic episodes whose branched steps hold a WAIT rollout and a germination rollout (so every
    counterfactual comparison has its baseline), two causes, and epochs that count up."""
    episodes = make_episodes(0, count, steps=steps)
    for index, (episode, rows) in enumerate(episodes):
        episode["scenario"] = ["lr_too_low", "healthy"][index % 2]
        for step, row in enumerate(rows):
            row["epoch"] = step + 1
            row["val_accuracy"] = f32(40.0 + 5 * step + index % 7)
            if row["counterfactual"] is not None:
                row["counterfactual"] = [{"action": "WAIT", "accuracy": f32(50.0 + index % 3)},
                                         {"action": "GERMINATE_CONV", "accuracy": f32(55.0 + index % 5)}]
                row["best_action"] = "GERMINATE_CONV"
                row["counterfactual_epochs"] = 10
    return episodes


def write_pack_without(path: Path, episodes: Episodes, column: str, profile: str = "diagnostic") -> None:
    """`write_pack`, by a writer whose steps table lacks the decision column `column`: a pack as the
    writer made it before that column existed."""
    from unittest import mock

    from telemetry.packs import tables

    fields = tuple(f for f in tables.DECISION_FIELDS if f.name != column)
    assert len(fields) == len(tables.DECISION_FIELDS) - 1, f"{column!r} is not a decision column"
    with mock.patch.object(tables, "DECISION_FIELDS", fields):
        write_pack(path, episodes, profile=profile)
