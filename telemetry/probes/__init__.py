"""Probes, one per feature group (one instrument each); `registry.py` orders and enables them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from telemetry.config import TelemetryConfig
from telemetry.errors import SchemaError
from telemetry.layers import check_unique_keys, resolve_layers, seed_slot_names
from telemetry.probes.probe import Probe, ProbeContext, StepInfo
from telemetry.probes.registry import GROUP_ORDER, REGISTRY

__all__ = ["GROUP_ORDER", "Probe", "ProbeContext", "ProbeFactory", "StepInfo", "build_probes"]

ProbeFactory = Callable[[ProbeContext], Probe]  # a Probe subclass is one


def build_probes(config: TelemetryConfig, model: nn.Module, num_classes: int, rng_seed: int = 0,
                 extra: Sequence[ProbeFactory] = ()) -> list[Probe]:
    """The enabled built-in probes in registry order, then `extra` (user probes). No hooks yet."""
    # Only the gradient, weight-norm and activation probes read layers; a profile without them (minimal)
    # must not require the model to have any.
    needs_layers = config.gradients.enabled or config.track_weight_norms or config.track_activation_stats
    layers = resolve_layers(model, config.gradients.layers) if needs_layers else []
    check_unique_keys([name for name, _ in layers], "layers")
    slots = seed_slot_names(model)
    check_unique_keys(slots, "seed slots")
    ctx = ProbeContext(config=config, model=model, layers=layers, num_classes=num_classes, slots=slots,
                       rng_seed=rng_seed)
    built: dict[str, Probe] = {}
    for registration in REGISTRY:
        if registration.enabled(ctx):
            built[registration.group] = registration.build(ctx, built)
    probes = list(built.values())
    for factory in extra:
        probe = factory(ctx)
        if not isinstance(probe, Probe) or not probe.group:
            raise SchemaError(f"probes: {factory!r} did not build a Probe with a group name")
        if probe.group in GROUP_ORDER or any(p.group == probe.group for p in probes):
            raise SchemaError(f"probes: group {probe.group!r} is already taken; give the probe another group")
        probes.append(probe)
    return probes
