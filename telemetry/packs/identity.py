"""A pack's identity: the first manifest of a new pack, and the check that appended rows match it.

Everything a pack promises for its whole life is fixed when it is created: the telemetry config,
the feature schema, the Arrow schemas of both tables, the action vocabulary, the split fractions
and where the data came from (provenance). `new_manifest` checks every argument before anything
touches the disk; `check_same` refuses an append whose config or features differ, which would make
the pack unreadable as one table.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from telemetry.config import TelemetryConfig, load_config
from telemetry.errors import ConfigError, PackError
from telemetry.feature_schema import FeatureSchema
from telemetry.packs.columns import column_entries
from telemetry.packs.manifest import FeatureSchemaEntry, Manifest, Provenance, encode_schema
from telemetry.packs.quick_stats import QuickStats
from telemetry.packs.splits import DEFAULT_SPLITS, check_splits
from telemetry.packs.tables import DEFAULT_ACTIONS, check_actions, episodes_schema, steps_schema


def new_manifest(root: Path, config: TelemetryConfig, feature_schema: FeatureSchema,
                      provenance: Mapping[str, Any] | None, actions: Sequence[str] | None,
                      splits: Mapping[str, float] | None, profiles: Mapping[str, Sequence[str]] | None,
                      pack_id: str | None) -> Manifest:
    """Every argument checked and the manifest built before anything touches the disk."""
    if not isinstance(config, TelemetryConfig):
        raise PackError(f"config: expected a TelemetryConfig, got {type(config).__name__}")
    if not isinstance(feature_schema, FeatureSchema):
        raise PackError(f"feature_schema: expected a FeatureSchema, got {type(feature_schema).__name__}")
    names = check_actions(DEFAULT_ACTIONS if actions is None else actions)
    fractions = check_splits(DEFAULT_SPLITS if splits is None else splits)
    now = datetime.now(timezone.utc)
    try:
        manifest = Manifest(
            pack_id=pack_id or f"{root.name}-{now:%Y%m%d}-{uuid.uuid4().hex[:8]}",
            created_at=now,
            committed_at=now,
            commit=0,
            telemetry_config=config,
            feature_schema=FeatureSchemaEntry.of(feature_schema),
            profiles=_profiles(config, feature_schema, profiles),
            actions=names,
            splits=fractions,
            arrow_schemas={"steps": encode_schema(steps_schema(feature_schema)),
                           "episodes": encode_schema(episodes_schema())},
            quick_stats=QuickStats(),
            split_stats={s: QuickStats() for s in fractions},
            files=[],
            provenance=_provenance(provenance),
            columns=column_entries({"steps": steps_schema(feature_schema), "episodes": episodes_schema()},
                                   feature_schema.specs, names, fractions),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PackError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    try:
        manifest.to_json()
    except PydanticSerializationError as exc:
        reason = str(exc).splitlines()[0]
        raise PackError(f"provenance: a value is not JSON-serialisable ({reason})") from None
    return manifest


def _profiles(config: TelemetryConfig, feature_schema: FeatureSchema,
              given: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """The given profiles' feature names; without them, at least the pack's own profile when the
    config is that built-in profile unchanged (its names are then this schema's, less any user
    probes' features, which no profile has)."""
    if given is not None:
        return {str(name): [str(n) for n in names] for name, names in given.items()}
    try:
        builtin = load_config(config.profile_name)
    except ConfigError:
        return {}
    if builtin != config:
        return {}
    from telemetry.probes.registry import GROUP_ORDER

    return {config.profile_name: [s.name for s in feature_schema.specs if s.group in GROUP_ORDER]}


def _provenance(given: Mapping[str, Any] | None) -> Provenance:
    """Versions, host and command line recorded automatically, then the caller's keys over them."""
    try:
        return Provenance.model_validate({**_auto_provenance(), **dict(given or {})})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PackError(f"provenance.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _auto_provenance() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "esper_version": version("esper-telemetry"),
        "python_version": platform.python_version(),
        "torch_version": version("torch"),
        "pyarrow_version": pa.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "command_line": list(sys.argv),
    }


def check_same(root: Path, manifest: Manifest, config: TelemetryConfig,
                feature_schema: FeatureSchema) -> None:
    """Appending rows of another schema would make the pack unreadable as one table; refuse it."""
    difference = _first_difference(manifest.telemetry_config.model_dump(mode="json"),
                                   config.model_dump(mode="json"))
    if difference:
        key, ours, theirs = difference
        raise PackError(f"{root}: cannot append: telemetry_config.{key} is {ours!r} in the pack "
                        f"but {theirs!r} here")
    pack, given = manifest.features().specs, feature_schema.specs
    for i, (a, b) in enumerate(zip(pack, given, strict=False)):
        if a != b:
            raise PackError(f"{root}: cannot append: feature {i} is {a.name!r} ({a.dtype}) in the pack "
                            f"but {b.name!r} ({b.dtype}) here")
    if len(pack) != len(given):
        raise PackError(f"{root}: cannot append: the pack has {len(pack)} features, "
                        f"this feature schema {len(given)}")


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)
