"""Probes, one per feature group; the schema is their declarations concatenated in GROUP_ORDER."""

from __future__ import annotations

from torch import nn

from telemetry.config import TelemetryConfig
from telemetry.layers import check_unique_keys, resolve_layers, seed_slot_names
from telemetry.probes.activations import ActivationProbe
from telemetry.probes.base import BaseProbe
from telemetry.probes.gradients import GradientProbe
from telemetry.probes.history import HistoryProbe
from telemetry.probes.loss_landscape import LossLandscapeProbe
from telemetry.probes.per_class import PerClassProbe
from telemetry.probes.probe import Probe, ProbeContext, StepInfo
from telemetry.probes.seed import SeedProbe
from telemetry.probes.weight_norms import WeightNormProbe

__all__ = ["Probe", "ProbeContext", "StepInfo", "build_probes"]


def build_probes(config: TelemetryConfig, model: nn.Module, num_classes: int, seed: int = 0) -> list[Probe]:
    """The enabled probes, in the schema's fixed group order. Builds no hooks and no device state."""
    # Only the gradient, weight-norm and activation probes read layers; a profile without them (minimal)
    # must not require the model to have any.
    needs_layers = config.gradients.enabled or config.track_weight_norms or config.track_activation_stats
    layers = resolve_layers(model, config.gradients.layers) if needs_layers else []
    check_unique_keys([name for name, _ in layers], "layers")
    slots = seed_slot_names(model)
    check_unique_keys(slots, "seed slots")
    ctx = ProbeContext(config=config, model=model, layers=layers, num_classes=num_classes, slots=slots)
    base = BaseProbe(ctx)
    probes: list[Probe] = [base]
    if config.history_length > 5:
        probes.append(HistoryProbe(ctx, base))
    if config.gradients.enabled:
        probes.append(GradientProbe(ctx, seed=seed))
    if config.per_class.enabled and (config.per_class.track_accuracy or config.per_class.track_loss
                                     or config.per_class.track_confusion):
        probes.append(PerClassProbe(ctx))
    if config.loss_landscape.enabled:
        probes.append(LossLandscapeProbe(ctx, seed=seed))
    if config.track_weight_norms:
        probes.append(WeightNormProbe(ctx))
    if config.track_activation_stats:
        probes.append(ActivationProbe(ctx))
    if slots and (SeedProbe(ctx).features()):
        probes.append(SeedProbe(ctx))
    return probes
