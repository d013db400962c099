"""What the environment tells the tracker about the seed in a slot: base features 21-26 and the
lifecycle group (probes/lifecycle.py).

The tracker cannot infer lifecycle stage, blending alpha, a seed's blueprint or the seed path's
accuracy from a module; the environment that owns the lifecycle reports them. A plain training loop
with no seeds passes nothing and gets zeros and nulls.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class SeedStage(IntEnum):
    """Lifecycle stages, with the integers stored in the `seed_stage` feature."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    FOSSILIZED = 4
    CULLED = 5


@dataclass(frozen=True)
class SeedStatus:
    has_active_seed: bool = False
    stage: SeedStage = SeedStage.DORMANT
    epochs_in_stage: int = 0
    alpha: float = 0.0
    improvement: float = 0.0
    available_slots: int = 0
    # the lifecycle group
    val_accuracy: float | None = None  # the host's, this step (what seed_path_gain is relative to)
    seed_path_accuracy: float | None = None  # with the TRAINING seed's output in place of the slot's
    isolated_seed_loss: float | None = None
    blueprint: str | None = None  # of the live or fossilized seed
    tried: tuple[str, ...] = ()  # blueprints germinated so far
    param_share: float = 0.0
    param_epochs: float = 0.0
