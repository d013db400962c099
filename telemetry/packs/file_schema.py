"""How a Parquet file's columns differ from its table's canonical schema.

Readers hand every file the manifest's canonical schema, and pyarrow, polars and DuckDB fill a
column a file lacks with nulls: a file of another profile, listed with a correct size and checksum,
would read as a pack whose extra features are all null (and train as zeros). The reader refuses
such a file when it first opens it, and `esper validate` names the difference, both from here.
"""

from __future__ import annotations

import pyarrow as pa


def schema_difference(found: pa.Schema, expected: pa.Schema) -> str | None:
    """How a file's columns differ from a table's canonical schema, by name and type; None when they
    do not (order and metadata aside, which readers handle by name)."""
    have = {f.name: f.type for f in found}
    missing = [f.name for f in expected if f.name not in have]
    extra = [name for name in have if expected.get_field_index(name) < 0]
    retyped = [f"{f.name} is {have[f.name]}, expected {f.type}" for f in expected
               if f.name in have and not have[f.name].equals(f.type)]
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} column(s) ({_some(missing)})")
    if extra:
        parts.append(f"has {len(extra)} column(s) that are not ({_some(extra)})")
    if retyped:
        parts.append(f"has {len(retyped)} column(s) of another type ({_some(retyped)})")
    return "; ".join(parts) or None


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
