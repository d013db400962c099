"""Packs: episodes of decision steps as crash-safe, partitioned Parquet with a JSON manifest.

The public surface of the pack store. Everything else in this package is internal:

- writer.py: `PackWriter`, the only way data gets into a pack (staging.py writes its files,
  parquet.py fixes their settings, rows.py checks what callers hand it, identity.py builds a new
  pack's manifest);
- commit.py: the whole commit protocol (publish, prune, migrate, recover an interrupted create),
  with the crash-test hooks of faults.py; lock.py: one writer per pack; current_link.py: a lost or
  broken `current` link, named and repaired;
- manifest.py: the commit record; tables.py: the Arrow schemas of the two tables; columns.py: what
  every column means (recorded in the manifest); quick_stats.py and splits.py: what the manifest
  keeps about the rows; card.py: the dataset card (PACK/README.md) and the whole-pack glob guard;
- reader.py: `open_pack` and `Pack` (Arrow, polars, DuckDB, torch; matrix.py fills the tensors);
  file_schema.py: how a file's columns differ from its table's; validate.py: `validate_pack`;
  repair.py: copies that lost or followed the links;
- report.py (figures in report_figures.py) and explain.py: a pack and an episode for people;
- cli.py: `esper inspect | query | validate | repair | report | explain`; sandbox.py: the read-only
  connection `query` uses.

Names resolve lazily, so `from telemetry.packs import open_pack` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PackWriter": "telemetry.packs.writer",
    "recover_interrupted_create": "telemetry.packs.commit",
    "repair_current": "telemetry.packs.current_link",
    "broken_current": "telemetry.packs.current_link",
    "open_pack": "telemetry.packs.reader",
    "Pack": "telemetry.packs.reader",
    "PackTensors": "telemetry.packs.reader",
    "NO_ACTION": "telemetry.packs.reader",
    "validate_pack": "telemetry.packs.validate",
    "leftovers": "telemetry.packs.validate",
    "read_manifest": "telemetry.packs.manifest",
    "Manifest": "telemetry.packs.manifest",
    "FileEntry": "telemetry.packs.manifest",
    "MANIFEST_NAME": "telemetry.packs.manifest",
    "TABLES": "telemetry.packs.manifest",
    "file_sha256": "telemetry.packs.manifest",
    "DEFAULT_ACTIONS": "telemetry.packs.tables",
    "SPLIT_COLUMN": "telemetry.packs.tables",
    "steps_schema": "telemetry.packs.tables",
    "episodes_schema": "telemetry.packs.tables",
    "parquet_options": "telemetry.packs.parquet",
    "ROW_GROUP_ROWS": "telemetry.packs.parquet",
    "QuickStats": "telemetry.packs.quick_stats",
    "DEFAULT_SPLITS": "telemetry.packs.splits",
    "split_of": "telemetry.packs.splits",
    "query_library": "telemetry.packs.cli",
    "render_card": "telemetry.packs.card",
    "described_columns": "telemetry.packs.columns",
    "repair_pack": "telemetry.packs.repair",
    "render_report": "telemetry.packs.report",
    "episode_brief": "telemetry.packs.explain",
}

__all__ = [
    "DEFAULT_ACTIONS",
    "DEFAULT_SPLITS",
    "FileEntry",
    "MANIFEST_NAME",
    "Manifest",
    "NO_ACTION",
    "Pack",
    "PackTensors",
    "PackWriter",
    "QuickStats",
    "ROW_GROUP_ROWS",
    "SPLIT_COLUMN",
    "TABLES",
    "broken_current",
    "described_columns",
    "episode_brief",
    "episodes_schema",
    "file_sha256",
    "leftovers",
    "open_pack",
    "parquet_options",
    "query_library",
    "read_manifest",
    "recover_interrupted_create",
    "render_card",
    "render_report",
    "repair_current",
    "repair_pack",
    "split_of",
    "steps_schema",
    "validate_pack",
]

if TYPE_CHECKING:
    from telemetry.packs.card import render_card
    from telemetry.packs.cli import query_library
    from telemetry.packs.columns import described_columns
    from telemetry.packs.commit import recover_interrupted_create
    from telemetry.packs.current_link import broken_current, repair_current
    from telemetry.packs.explain import episode_brief
    from telemetry.packs.manifest import MANIFEST_NAME, TABLES, FileEntry, Manifest, file_sha256, read_manifest
    from telemetry.packs.parquet import ROW_GROUP_ROWS, parquet_options
    from telemetry.packs.quick_stats import QuickStats
    from telemetry.packs.reader import NO_ACTION, Pack, PackTensors, open_pack
    from telemetry.packs.repair import repair_pack
    from telemetry.packs.report import render_report
    from telemetry.packs.splits import DEFAULT_SPLITS, split_of
    from telemetry.packs.tables import DEFAULT_ACTIONS, SPLIT_COLUMN, episodes_schema, steps_schema
    from telemetry.packs.validate import leftovers, validate_pack
    from telemetry.packs.writer import PackWriter


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'telemetry.packs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
