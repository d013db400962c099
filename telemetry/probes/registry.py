"""The one registry of built-in probes: the order of the feature groups and what enables each.

The feature schema is the concatenation of the enabled probes' declarations in this order, followed
by any user probes given to the tracker. Adding a feature group is one probe module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from telemetry.probes.activations import ActivationProbe
from telemetry.probes.base import BASE_HISTORY, BaseProbe
from telemetry.probes.gradients import GradientProbe
from telemetry.probes.history import HistoryProbe
from telemetry.probes.lifecycle import LifecycleProbe
from telemetry.probes.loss_landscape import LossLandscapeProbe
from telemetry.probes.per_class import PerClassProbe
from telemetry.probes.probe import Probe, ProbeContext
from telemetry.probes.seed import SeedProbe
from telemetry.probes.weight_norms import WeightNormProbe


@dataclass(frozen=True)
class Registration:
    group: str
    build: Callable[[ProbeContext, dict[str, Probe]], Probe]  # (context, probes built so far) -> probe
    enabled: Callable[[ProbeContext], bool]


def _per_class(ctx: ProbeContext) -> bool:
    c = ctx.config.per_class
    return c.enabled and (c.track_accuracy or c.track_loss or c.track_confusion)


def _seed(ctx: ProbeContext) -> bool:
    c = ctx.config
    return bool(ctx.slots) and ((c.gradients.enabled and c.gradients.track_norm) or c.track_weight_norms)


REGISTRY: tuple[Registration, ...] = (
    Registration("base", lambda ctx, built: BaseProbe(ctx), lambda ctx: True),
    Registration("lifecycle", lambda ctx, built: LifecycleProbe(ctx), lambda ctx: ctx.config.lifecycle.enabled),
    Registration("history", lambda ctx, built: HistoryProbe(ctx, built["base"]),
                 lambda ctx: ctx.config.history_length > BASE_HISTORY),
    Registration("gradients", lambda ctx, built: GradientProbe(ctx), lambda ctx: ctx.config.gradients.enabled),
    Registration("per_class", lambda ctx, built: PerClassProbe(ctx), _per_class),
    Registration("loss_landscape", lambda ctx, built: LossLandscapeProbe(ctx),
                 lambda ctx: ctx.config.loss_landscape.enabled),
    Registration("weight_norms", lambda ctx, built: WeightNormProbe(ctx), lambda ctx: ctx.config.track_weight_norms),
    Registration("activations", lambda ctx, built: ActivationProbe(ctx),
                 lambda ctx: ctx.config.track_activation_stats),
    Registration("seed", lambda ctx, built: SeedProbe(ctx), _seed),
)

GROUP_ORDER: tuple[str, ...] = tuple(r.group for r in REGISTRY)
