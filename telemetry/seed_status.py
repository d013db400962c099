"""What the environment tells the tracker about the seed in a slot, for base features 21-26.

The tracker cannot infer lifecycle stage or blending alpha from a module; the environment that owns
the lifecycle reports them. A plain training loop with no seeds passes nothing and gets zeros.
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
