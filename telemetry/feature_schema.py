"""The feature schema: derived from (config, model, number of classes), never written by hand.

It is the concatenation of the enabled probes' declarations in a fixed group order. It yields the
Arrow fields of the steps table and the `_index` (name -> position), and it is what lets a pack be
sliced by name into any smaller profile's features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
from torch import nn

from telemetry.config import TelemetryConfig
from telemetry.errors import SchemaError

GROUP_ORDER = (
    "base",
    "history",
    "gradients",
    "per_class",
    "loss_landscape",
    "weight_norms",
    "activations",
    "seed",
)

_ARROW_TYPES = {"float32": pa.float32(), "float64": pa.float64(), "int32": pa.int32(), "int64": pa.int64()}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    group: str
    dtype: str
    unit: str
    description: str

    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, _ARROW_TYPES[self.dtype], nullable=True)


@dataclass(frozen=True)
class FeatureSchema:
    specs: tuple[FeatureSpec, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.specs:
            if spec.name in seen:
                raise SchemaError(f"feature name {spec.name!r} is declared twice")
            seen.add(spec.name)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def index(self) -> dict[str, int]:
        """`_index` of the design: feature name -> position in the row."""
        return {s.name: i for i, s in enumerate(self.specs)}

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for spec in self.specs:
            out.setdefault(spec.group, []).append(spec.name)
        return out

    def arrow_fields(self) -> list[pa.Field]:
        return [s.arrow_field() for s in self.specs]

    def select(self, names: Iterable[str]) -> FeatureSchema:
        """The sub-schema for `names`, in this schema's order; an unknown name is an error."""
        wanted = list(names)
        index = self.index
        missing = [n for n in wanted if n not in index]
        if missing:
            raise SchemaError(f"features not in this schema: {', '.join(missing[:5])}")
        keep = set(wanted)
        return FeatureSchema(tuple(s for s in self.specs if s.name in keep))

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: groups, ordered specs and `_index`."""
        return {
            "groups": self.groups(),
            "features": [asdict(s) for s in self.specs],
            "_index": self.index,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(tuple(FeatureSpec(**f) for f in data["features"]))


def build_feature_schema(config: TelemetryConfig, model: nn.Module, num_classes: int) -> FeatureSchema:
    """Resolve layers against `model` and concatenate the enabled probes' feature declarations."""
    from telemetry.probes import build_probes  # probes import this module for FeatureSpec

    return FeatureSchema(tuple(spec for probe in build_probes(config, model, num_classes) for spec in probe.features()))
