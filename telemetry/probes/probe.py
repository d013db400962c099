"""The probe: one feature group, its declared features, and device-resident accumulators.

Shaped like torchmetrics' Metric. Hot-path hooks (`train_batch`, `val_batch`) only launch device
work; `payload` hands device tensors to the tracker, which concatenates every probe's payload and
brings it to the host in one transfer per decision step; `finish` turns the host values into the
probe's slice of the row. Probes never call `.item()` or branch on device values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from telemetry.config import TelemetryConfig
from telemetry.feature_schema import FeatureSpec
from telemetry.seed_status import SeedStatus

Value = float | int | None


@dataclass
class ProbeContext:
    """What every probe may know about the run, fixed when the schema is built."""

    config: TelemetryConfig
    model: nn.Module
    layers: list[tuple[str, nn.Module]]
    num_classes: int
    slots: list[str]


@dataclass
class StepInfo:
    """Per-step facts shared between probes on the host side (filled in group order)."""

    epoch: int
    global_step: int
    seed: SeedStatus
    values: dict[str, Value] = field(default_factory=dict)


class Probe:
    group: str = ""

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx

    def features(self) -> list[FeatureSpec]:
        raise NotImplementedError

    def spec(self, name: str, description: str, unit: str = "", dtype: str = "float32") -> FeatureSpec:
        return FeatureSpec(name=name, group=self.group, dtype=dtype, unit=unit, description=description)

    def attach(self) -> None:
        """Install hooks; called once by the tracker."""

    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        """After backward: gradients are populated. Device work only."""

    def val_batch(self, logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> None:
        """During validation: per-sample `losses` already computed by the tracker."""

    def payload(self, probe_batch: tuple[torch.Tensor, torch.Tensor] | None) -> list[torch.Tensor]:
        """Device tensors this probe needs on the host for the step (concatenated by the tracker)."""
        return []

    def finish(self, host: np.ndarray, info: StepInfo) -> list[Value]:
        """Row values in `features()` order from this probe's slice of the transferred payload."""
        raise NotImplementedError

    def reset(self) -> None:
        """Clear the step's accumulators (called after every decision step)."""

    def close(self) -> None:
        """Remove every hook this probe added."""


def none_if(missing: bool, value: float) -> float | None:
    """Null marks 'not measured this step' (no batches, no seed); NaN/Inf from training stay as is."""
    return None if missing else float(value)
