"""Turning what callers hand the writer (row dicts, Arrow tables) into tables of the canonical schema.

The writer must refuse bad input before buffering anything, with one line that names the episode,
row, column and expected type: a pack's schema never changes, so a wrong type or an unknown column
is a caller's bug to surface at once, not a value to coerce silently or drop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from telemetry.errors import PackError


def with_identity(table: pa.Table, episode_id: str) -> pa.Table:
    """Fill `episode_id` and `step` of one episode's steps table when they were left out."""
    n = table.num_rows
    if "episode_id" in table.column_names:
        ids = table.column("episode_id")
        if ids.null_count or (n and pc.any(pc.not_equal(ids, episode_id)).as_py()):
            raise PackError(f"episode {episode_id!r} steps: episode_id column holds another id or nulls")
    else:
        table = table.append_column("episode_id", pa.repeat(pa.scalar(episode_id), n))
    if "step" not in table.column_names:
        table = table.append_column("step", pa.array(np.arange(n, dtype=np.int32)))
    return table


def from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str) -> pa.Table:
    """Row dicts to a table of `schema`; an unknown key or a bad value is named in one line."""
    allowed = set(schema.names)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise PackError(f"{what}: row {i} is a {type(row).__name__}; expected a mapping")
        unknown = [k for k in row if k not in allowed]
        if unknown:
            raise PackError(f"{what}: unknown column {unknown[0]!r}; "
                            "expected a feature name or a fixed column of the pack schema")
    try:
        table = pa.Table.from_pylist(list(rows), schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        raise PackError(_locate_bad_value(rows, schema, what)) from None
    _check_not_null(table, schema, what)
    return table


def _locate_bad_value(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str) -> str:
    for field in schema:
        for i, row in enumerate(rows):
            try:
                pa.array([row.get(field.name)], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                return f"{what}: row {i}: {field.name} = {row.get(field.name)!r}; expected {field.type}"
    return f"{what}: rows do not convert to the pack schema"


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Any Arrow table (polars' large strings, float64 features...) cast to the canonical schema."""
    names = table.column_names
    if len(set(names)) != len(names):
        raise PackError(f"{what}: a column name appears twice")
    known = set(schema.names)  # schema.names builds a new list on every access
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PackError(f"{what}: unknown column {unknown[0]!r}; expected a feature name or a fixed column "
                        "of the pack schema")
    columns = []
    for field in schema:
        if field.name not in names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise PackError(f"{what}: column {field.name!r} is {column.type}; expected {field.type} "
                                f"({str(exc).splitlines()[0]})") from None
        columns.append(column)
    out = pa.Table.from_arrays(columns, schema=schema)
    _check_not_null(out, schema, what)
    return out


def _check_not_null(table: pa.Table, schema: pa.Schema, what: str) -> None:
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise PackError(f"{what}: column {field.name!r} has null values; it is required")


def check_decisions(steps: pa.Table, actions: list[str]) -> None:
    """Actions must be in the vocabulary and masks must have one non-null entry per action."""
    action = steps.column("action")
    if action.null_count < steps.num_rows:
        bad = pc.and_(pc.is_valid(action), pc.invert(pc.is_in(action, value_set=pa.array(actions))))
        if pc.any(bad).as_py():
            row = steps.filter(bad).slice(0, 1).to_pylist()[0]
            raise PackError(f"episode {row['episode_id']!r} step {row['step']}: action {row['action']!r} "
                            f"is not one of the pack's actions ({', '.join(actions)})")
    mask = steps.column("action_mask")
    if mask.null_count < steps.num_rows:
        wrong = pc.and_(pc.is_valid(mask), pc.not_equal(pc.list_value_length(mask), len(actions)))
        if pc.any(wrong).as_py():
            row = steps.filter(wrong).slice(0, 1).to_pylist()[0]
            raise PackError(f"episode {row['episode_id']!r} step {row['step']}: action_mask has "
                            f"{len(row['action_mask'])} entries; expected {len(actions)}, one per action")
        if pc.list_flatten(mask).null_count:
            raise PackError("steps: action_mask holds null entries; expected true or false for every action")


def check_episode_ids(ids: list[str], known: set[str], pack: object) -> None:
    """New episode ids must be non-empty, distinct, and not yet in the pack."""
    seen: set[str] = set()
    for episode_id in ids:
        if episode_id in known:
            raise PackError(f"episode {episode_id!r} is already in the pack {pack}")
        if episode_id in seen:
            raise PackError(f"episode {episode_id!r} is given twice")
        if not episode_id:
            raise PackError("episode_id is empty; expected a non-empty string")
        seen.add(episode_id)


def check_steps(steps: pa.Table, episodes: pa.Table, actions: list[str]) -> None:
    """Every step belongs to an episode being added, no (episode, step) twice, decisions valid."""
    if steps.num_rows == 0:
        return
    ep_ids = episodes.column("episode_id")
    index = pc.index_in(steps.column("episode_id"), value_set=ep_ids)
    if index.null_count:
        bad = steps.column("episode_id").filter(pc.is_null(index))[0].as_py()
        raise PackError(f"steps: episode_id {bad!r} has no episode among those being added")
    keys = index.to_numpy(zero_copy_only=False).astype(np.int64) << 32
    keys += steps.column("step").to_numpy().astype(np.int64) + 2**31
    keys.sort()
    dup = np.flatnonzero(keys[1:] == keys[:-1])
    if len(dup):
        key = int(keys[dup[0]])
        step = (key & 0xFFFFFFFF) - 2**31
        raise PackError(f"episode {ep_ids[key >> 32].as_py()!r}: step {step} appears twice")
    check_decisions(steps, actions)
