"""Counterfactual hindsight: what every valid action would have led to, from the same state.

At a chosen decision step the full environment state (host and seed weights, optimizer, lifecycle,
tracker, shuffling and global RNGs) is captured; each valid action is then applied from that state
and followed for `k` epochs (fewer if the episode ends first) by the greedy heuristic (no
exploration), and the validation accuracy at the end of the rollout is recorded. The state is
restored before the main episode continues, so the episode is bit for bit what it would have been
without branching.

The best action is the one with the highest rollout accuracy; ties go to the earlier action in the
vocabulary (WAIT first), i.e. to the cheaper intervention. These labels let a policy learn what
*should* have been done, instead of imitating what the behaviour policy did.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.environment.actions import Action
from pipelines.environment.morphogenetic_env import MorphogeneticEnv
from pipelines.policies.heuristic import HeuristicTamiyo


@dataclass(frozen=True)
class Rollouts:
    accuracy: dict[str, float]  # action name -> validation accuracy after the rollout
    epochs: int  # epochs rolled out: k, or fewer when the episode ends first

    @property
    def best_action(self) -> str:
        best = max(self.accuracy.values())
        return next(name for name, acc in self.accuracy.items() if acc == best)


def rollouts(env: MorphogeneticEnv, valid: Sequence[Action], k: int,
             policy: HeuristicTamiyo) -> Rollouts:
    """Roll out each of `valid` for up to `k` epochs from the env's current state, then restore it.

    Call it before `policy` acts on this step: each rollout continues from a copy of the policy as
    it was before the decision, plus the bookkeeping of the rolled-out action, so a rollout of the
    action the episode then takes (greedily) reproduces the episode exactly."""
    state = env.snapshot()
    accuracy: dict[str, float] = {}
    epochs = min(k, env.epochs - 1 - env.epoch)
    try:
        for action in sorted(valid):
            env.restore(state)
            accuracy[action.name] = _rollout(env, action, k, policy)
    finally:
        env.restore(state)
    return Rollouts(accuracy=accuracy, epochs=epochs)


def _rollout(env: MorphogeneticEnv, first: Action, k: int, policy: HeuristicTamiyo) -> float:
    """`first`, then the greedy heuristic until k epochs have passed or the episode ends."""
    greedy = copy.deepcopy(policy)
    greedy.epsilon = 0.0
    unused = random.Random(0)  # act() draws from it; with epsilon 0 the draw changes nothing
    greedy.record(first)
    row, _, done, _ = env.step(first)
    epochs = 1
    while epochs < k and not done:
        row, _, done, _ = env.step(greedy.act(env.policy_view(row), list(env.valid_mask()), unused).action)
        epochs += 1
    return env.accuracy
