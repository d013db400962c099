"""Counterfactual labels: what every valid action is worth, from the same state, to the episode's end.

At a branch point the full environment state (host and seed weights, optimizer, lifecycle, tracker,
shuffling and global RNGs) is captured; each valid action is applied from that state and followed by
a scripted continuation to the end of the episode (or a stated horizon), and the state is restored,
so the main episode is bit for bit what it would have been without branching.

An action's value is the primary score's decomposition on the decision-validation split (the test
split is never read): accuracy at the end of the rollout minus `param_cost` x the seed
parameter-epochs from the branch point on. Every valid action's value is stored; `best` is the set
of actions with the maximal value (exact ties, e.g. FOSSILIZE and WAIT at a complete ramp, where the
forward is identical), never broken silently towards WAIT.

Continuations (recorded in the manifest):
- `replant` (the default): finish the live seed on the commit schedule and never germinate again
  (policies/experts.commit_action), except that a CULL at the branch point is followed by the
  cause's remedy, planted at once (expert_action). Under plain `commit`, a CULL means "never
  intervene again", so a wrong seed in a stalled host is labelled keep; under the heuristic, a
  germination is credited with whatever the heuristic does next. The cause enters only the value
  of CULL (a label is a target, never a feature).
- `commit`: the commit schedule after every action.

Branch points are stratified over the seed lifecycle (`stratum`): dormant (a free slot), training,
blending and ramp_complete. `BranchPlan` gives every episode one dormant branch point (the first
dormant decision from an epoch drawn among DORMANT_EPOCHS, where the choice of remedy is made) and
each live stratum its own chance, so every stratum gets labels, not only the dormant steps a uniform
draw would mostly pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.environment.actions import Action
from pipelines.environment.morphogenetic_env import MorphogeneticEnv
from pipelines.policies.experts import commit_action, expert_action
from telemetry import SeedStage

CONTINUATIONS = ("replant", "commit")
STRATA = ("dormant", "training", "blending", "ramp_complete")
DORMANT_EPOCHS = (1, 8)  # the dormant branch point is drawn among these epochs (inclusive): before a stall shows


@dataclass(frozen=True)
class ActionValues:
    """Every valid action's value at one branch point, with its parts."""

    value: dict[str, float]  # accuracy - cost
    accuracy: dict[str, float]  # decision-validation accuracy at the end of the rollout
    cost: dict[str, float]  # param_cost x seed parameter-epochs from the branch point on
    epochs: int  # epochs rolled out after the branch point
    stratum: str

    @property
    def best(self) -> list[str]:
        """Every action with the maximal value, in vocabulary order (a set: ties stay ties)."""
        top = max(self.value.values())
        return [a for a, v in self.value.items() if v == top]

    @property
    def best_action(self) -> str | None:
        """The unique best action; None when several tie."""
        best = self.best
        return best[0] if len(best) == 1 else None


def stratum(env: MorphogeneticEnv) -> str | None:
    """The lifecycle stratum of the decision about to be made (None for a fossilized slot)."""
    slot = env.slot
    if slot.can_germinate:
        return "dormant"
    if slot.stage in (SeedStage.GERMINATED, SeedStage.TRAINING):
        return "training"
    if slot.stage == SeedStage.BLENDING:
        return "ramp_complete" if slot.lifecycle.ramp_complete else "blending"
    return None


def action_values(env: MorphogeneticEnv, valid: Sequence[Action], remedy: str | None,
                  continuation: str = "replant", horizon: int | None = None) -> ActionValues:
    """Roll out each of `valid` under `continuation` to the episode end (or `horizon` epochs), then
    restore the env exactly. `remedy`: the cause's remedy blueprint (REMEDIES), for `replant`."""
    if continuation not in CONTINUATIONS:
        raise ValueError(f"continuation {continuation!r}; expected one of {', '.join(CONTINUATIONS)}")
    state, start_cost, start = env.snapshot(), env.param_epochs, env.epoch
    where = stratum(env) or "other"
    value, accuracy, cost = {}, {}, {}
    try:
        for action in sorted(valid):
            env.restore(state)
            _, _, done, _ = env.step(action)
            replant = continuation == "replant" and action == Action.CULL
            while not done and (horizon is None or env.epoch - start < horizon):
                _, _, done, _ = env.step(expert_action(env, remedy) if replant else commit_action(env))
            c = env.options.param_cost * (env.param_epochs - start_cost)
            value[action.name], accuracy[action.name], cost[action.name] = env.accuracy - c, env.accuracy, c
        epochs = env.epoch - start
    finally:
        env.restore(state)
    return ActionValues(value=value, accuracy=accuracy, cost=cost, epochs=epochs, stratum=where)


@dataclass
class BranchPlan:
    """Which decisions of one episode are branched: with `probability` > 0, the first dormant decision
    from an epoch drawn among DORMANT_EPOCHS, and each live stratum's first decision with `probability`."""

    rng: np.random.Generator
    probability: float
    epochs: int
    chosen: dict[str, bool] = field(init=False)
    dormant_epoch: int = field(init=False)
    taken: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        draws = self.rng.random(len(STRATA))
        self.chosen = {s: bool(d < self.probability) for s, d in zip(STRATA, draws, strict=True)}
        self.chosen["dormant"] = self.probability > 0
        last = max(DORMANT_EPOCHS[0], min(DORMANT_EPOCHS[1], self.epochs - 2))
        self.dormant_epoch = int(self.rng.integers(DORMANT_EPOCHS[0], last + 1))

    def branch(self, env: MorphogeneticEnv) -> bool:
        """Whether to branch at this decision (at most once per stratum)."""
        where = stratum(env)
        if where is None or where in self.taken or not self.chosen[where]:
            return False
        if where == "dormant" and env.epoch < self.dormant_epoch:
            return False
        self.taken.add(where)
        return True
