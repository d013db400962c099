"""esper-telemetry: training diagnostics recorded per decision step, stored as queryable packs.

The library stands alone (it never imports `pipelines`). Its public surface:

    from telemetry import DiagnosticTracker, load_config, open_pack

- configuration: `load_config`, `profile_names`, `TelemetryConfig`;
- the schema: `FeatureSchema`, `FeatureSpec`, `build_feature_schema`, `profile_feature_names`;
- the tracker: `DiagnosticTracker`, the `Probe` base class for user probes, `ProbeContext`,
  `SeedStatus` and `SeedStage` (what an environment reports about a seed);
- packs: `PackWriter`, `open_pack`, `Pack`, `validate_pack`, `read_manifest`, `Manifest`
  (more in `telemetry.packs`);
- errors: `EsperError` and its kinds `ConfigError`, `SchemaError`, `PackError`;
- input bounds: `read_json`, a JSON file bounded in size and nesting depth (telemetry/bounded.py).

Names resolve lazily, so importing a pack reader does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_config": "telemetry.config",
    "profile_names": "telemetry.config",
    "TelemetryConfig": "telemetry.config",
    "FeatureSchema": "telemetry.feature_schema",
    "FeatureSpec": "telemetry.feature_schema",
    "build_feature_schema": "telemetry.feature_schema",
    "profile_feature_names": "telemetry.feature_schema",
    "DiagnosticTracker": "telemetry.tracker",
    "Probe": "telemetry.probes.probe",
    "ProbeContext": "telemetry.probes.probe",
    "SeedStatus": "telemetry.seed_status",
    "SeedStage": "telemetry.seed_status",
    "PackWriter": "telemetry.packs.writer",
    "open_pack": "telemetry.packs.reader",
    "Pack": "telemetry.packs.reader",
    "validate_pack": "telemetry.packs.validate",
    "read_manifest": "telemetry.packs.manifest",
    "Manifest": "telemetry.packs.manifest",
    "EsperError": "telemetry.errors",
    "ConfigError": "telemetry.errors",
    "SchemaError": "telemetry.errors",
    "PackError": "telemetry.errors",
    "read_json": "telemetry.bounded",
}

__all__ = [
    "ConfigError",
    "DiagnosticTracker",
    "EsperError",
    "FeatureSchema",
    "FeatureSpec",
    "Manifest",
    "Pack",
    "PackError",
    "PackWriter",
    "Probe",
    "ProbeContext",
    "SchemaError",
    "SeedStage",
    "SeedStatus",
    "TelemetryConfig",
    "build_feature_schema",
    "load_config",
    "open_pack",
    "profile_feature_names",
    "profile_names",
    "read_json",
    "read_manifest",
    "validate_pack",
]

if TYPE_CHECKING:
    from telemetry.bounded import read_json
    from telemetry.config import TelemetryConfig, load_config, profile_names
    from telemetry.errors import ConfigError, EsperError, PackError, SchemaError
    from telemetry.feature_schema import FeatureSchema, FeatureSpec, build_feature_schema, profile_feature_names
    from telemetry.packs.manifest import Manifest, read_manifest
    from telemetry.packs.reader import Pack, open_pack
    from telemetry.packs.validate import validate_pack
    from telemetry.packs.writer import PackWriter
    from telemetry.probes.probe import Probe, ProbeContext
    from telemetry.seed_status import SeedStage, SeedStatus
    from telemetry.tracker import DiagnosticTracker


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'telemetry' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
