"""The feature schema: derived from (config, model, number of classes), never written by hand.

It is the concatenation of the enabled probes' declarations in the order of one registry
(telemetry/probes/registry.py), followed by any user probes. It yields the
Arrow fields of the steps table and the `_index` (name -> position), and it is what lets a pack be
sliced by name into any smaller profile's features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from telemetry.config import TelemetryConfig, load_config, profile_names
from telemetry.errors import SchemaError

if TYPE_CHECKING:
    from torch import nn

_ARROW_TYPES = {"float32": pa.float32(), "float64": pa.float64(), "int32": pa.int32(), "int64": pa.int64()}


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its column name, the probe group that produces it, dtype, unit and meaning."""

    name: str
    group: str
    dtype: str
    unit: str
    description: str

    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, _ARROW_TYPES[self.dtype], nullable=True)


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered features of a run: names, groups, dtypes, units and descriptions.

    Derived, never written by hand: `build_feature_schema(config, model, num_classes)` (or a
    tracker's `.schema`). It gives the Arrow fields of the steps table and `_index` (name ->
    position), and `select` slices it by name, which is how a larger pack becomes a smaller profile.

    Args:
        specs: the features in order; names must be unique.

    Example:

        schema = build_feature_schema(load_config("standard"), model, num_classes=10)
        schema.names[:3]            # ['epoch', 'global_step', 'train_loss']
        schema.groups()["gradients"]
    """

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


def build_feature_schema(config: TelemetryConfig, model: nn.Module, num_classes: int,
                         probes: Sequence[Callable[..., Any]] = ()) -> FeatureSchema:
    """Resolve layers against `model` and concatenate the enabled probes' feature declarations.

    `probes` are user probe classes (or factories taking a ProbeContext), as given to the tracker.
    """
    from telemetry.probes import build_probes  # probes import this module for FeatureSpec

    built = build_probes(config, model, num_classes, extra=probes)
    return FeatureSchema(tuple(spec for probe in built for spec in probe.features()))


def profile_feature_names(model: nn.Module, num_classes: int,
                          profiles: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Each built-in profile's feature names for this model, in that profile's own order.

    Stored in the manifest so a pack written with a large profile can be sliced into exactly the
    features (and the column order) a smaller profile's tracker would produce, without the model.
    """
    names = profile_names() if profiles is None else profiles
    return {p: build_feature_schema(load_config(p), model, num_classes).names for p in names}
