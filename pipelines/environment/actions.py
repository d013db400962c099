"""The policy's actions and which of them are valid for a slot's state.

The order is fixed (it is the index a policy's output layer uses) and the names are what packs store.
A mask is computed from the lifecycle's own legality rules, so the mask and the state machine cannot
disagree: an action is valid exactly when applying it would not raise.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from pipelines.environment.lifecycle import LIVE_STAGES
from telemetry import SeedStage


class Action(IntEnum):
    WAIT = 0
    GERMINATE_CONV = 1
    GERMINATE_ATTENTION = 2
    GERMINATE_NORM = 3
    GERMINATE_DEPTHWISE = 4
    ADVANCE = 5
    FOSSILIZE = 6
    CULL = 7

    @property
    def blueprint(self) -> str | None:
        """The blueprint a GERMINATE_* action plants (`GERMINATE_CONV` -> `conv`); None otherwise."""
        prefix = "GERMINATE_"
        return self.name[len(prefix):].lower() if self.name.startswith(prefix) else None

    @classmethod
    def germinate(cls, blueprint: str) -> Action:
        return cls[f"GERMINATE_{blueprint.upper()}"]


ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in Action)
GERMINATE_ACTIONS: tuple[Action, ...] = tuple(a for a in Action if a.blueprint is not None)


def valid_actions(stage: SeedStage, *, slot_free: bool, ramp_complete: bool) -> np.ndarray:
    """Boolean mask over `Action` for one slot.

    `slot_free`: the slot holds no seed and may germinate (dormant, or after a cull).
    `ramp_complete`: a blending seed has reached alpha == 1 and may fossilize.
    """
    mask = np.zeros(len(Action), dtype=bool)
    mask[Action.WAIT] = True
    if slot_free:
        mask[[a.value for a in GERMINATE_ACTIONS]] = True
    if stage in (SeedStage.GERMINATED, SeedStage.TRAINING):
        mask[Action.ADVANCE] = True
    if stage == SeedStage.BLENDING and ramp_complete:
        mask[Action.FOSSILIZE] = True
    if stage in LIVE_STAGES:
        mask[Action.CULL] = True
    return mask
