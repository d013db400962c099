"""Scripted policies that the environment's labels and checks rest on (issue 12).

- `commit_action`: finish whatever seed is live on a fixed lifecycle schedule (ADVANCE from
  GERMINATED at once, ADVANCE to BLENDING after `train_epochs` training epochs, FOSSILIZE when the
  ramp completes) and never germinate. The continuation of counterfactual rollouts: Q(s, a) is then
  "a now, then finish what is live and intervene no more", so a germination is credited with what
  its seed is worth once blended, and WAIT at a dormant slot means "never intervene".
- `expert_action`: the privileged expert that knows the cause's remedy (the environment does, at
  generation time): culls a live seed that is not the remedy, germinates the remedy once the slot is
  free (from epoch `germinate_from`), then follows the commit schedule; waits where there is none.
  The oracle of the control check, and what follows a CULL in the "replant" continuation.
- `schedule_action`: one blueprint germinated at a fixed epoch, then the commit schedule (the
  control check's cause-blind fixed schedules).
- `FixedBlueprintHeuristic`: the heuristic that always germinates one blueprint.

The expert reads the cause; it is a teacher and a ceiling, never a behaviour a policy can match from
features alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.environment.actions import Action
from pipelines.environment.lifecycle import LIVE_STAGES
from pipelines.policies.heuristic import GERMINATE, HeuristicTamiyo
from telemetry import SeedStage

if TYPE_CHECKING:
    from pipelines.environment.morphogenetic_env import MorphogeneticEnv

TRAIN_EPOCHS = 3  # epochs a scheduled seed trains in isolation before it blends
EXPERT_GERMINATE_FROM = 1  # the expert plants from the first decision after epoch 0's measurement


def commit_action(env: MorphogeneticEnv, train_epochs: int = TRAIN_EPOCHS) -> Action:
    """Finish the live seed on schedule; never germinate."""
    slot, mask = env.slot, env.valid_mask()
    if slot.stage == SeedStage.GERMINATED:
        return Action.ADVANCE
    if slot.stage == SeedStage.TRAINING and slot.lifecycle.epochs_in_stage >= train_epochs:
        return Action.ADVANCE
    if mask[Action.FOSSILIZE]:
        return Action.FOSSILIZE
    return Action.WAIT


def expert_action(env: MorphogeneticEnv, remedy: str | None, germinate_from: int = 0,
                  train_epochs: int = TRAIN_EPOCHS) -> Action:
    """Cull a wrong seed, plant `remedy` once the slot is free, then commit; wait without a remedy."""
    slot, mask = env.slot, env.valid_mask()
    if slot.stage in LIVE_STAGES and slot.lifecycle.blueprint != remedy:
        return Action.CULL
    if remedy is not None and env.epoch >= germinate_from and mask[Action.germinate(remedy)]:
        return Action.germinate(remedy)
    return commit_action(env, train_epochs)


def schedule_action(env: MorphogeneticEnv, blueprint: str, germinate_at: int,
                    train_epochs: int = TRAIN_EPOCHS) -> Action:
    """Germinate `blueprint` at epoch `germinate_at`, then the commit schedule."""
    if env.epoch == germinate_at and env.valid_mask()[Action.germinate(blueprint)]:
        return Action.germinate(blueprint)
    return commit_action(env, train_epochs)


@dataclass
class FixedBlueprintHeuristic(HeuristicTamiyo):
    """Heuristic Tamiyo whose germinations always plant `blueprint` (no rotation)."""

    blueprint: str = "conv"

    def _germination_rule(self, row: dict[str, Any]) -> tuple[Action, str]:
        action, why = super()._germination_rule(row)
        if action in GERMINATE:
            return Action.germinate(self.blueprint), why.replace("is next in rotation", "always")
        return action, why
