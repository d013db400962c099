"""Heuristic Tamiyo, the behaviour policy that generates packs, with epsilon-exploration.

The rules are REFERENCE.md's: germinate once epoch >= 5 and the accuracy plateau has lasted >= 3
epochs (blueprints in rotation); a germinated seed is advanced into TRAINING at once; in TRAINING,
advance to BLENDING after >= 3 epochs if the seed improves accuracy by >= 1 point, cull after >= 5
epochs if it costs more than 2 points. "The seed improves accuracy" is measured as the environment's
`seed_path_gain` (validation accuracy with the seed's output in place of the slot's, minus the
host's): a seed in isolation does not touch the host's output, so the host's accuracy change since
germination (the fallback when the gain is not given) says nothing about the seed. After the
blending ramp, fossilize if the total improvement since germination is positive, else cull. One
addition, so a seed cannot idle forever: cull a seed that has trained for `max_training_epochs`
without earning an advance.

Every decision logs mu(a|s), the probability the behaviour policy gave the chosen action: with
probability epsilon a uniformly random valid action, else the rule's action, so
mu = (1 - eps) * [a == greedy] + eps / |valid|. Without it offline RL on the data is impossible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pipelines.environment.actions import Action
from telemetry import SeedStage

GERMINATE = [Action.GERMINATE_CONV, Action.GERMINATE_ATTENTION, Action.GERMINATE_NORM, Action.GERMINATE_DEPTHWISE]


@dataclass(frozen=True)
class Decision:
    action: Action
    prob: float  # mu(a|s) of the chosen action
    greedy: Action  # what the rules chose before exploration
    rule: str  # the rule that fired, in words: the decision context's why_this_action
    explored: bool = False
    why_not: dict[str, str] = field(default_factory=dict)  # one reason per rejected valid action


@dataclass
class HeuristicTamiyo:
    epsilon: float = 0.1
    min_epoch: int = 5
    plateau_epochs: int = 3
    advance_after: int = 3
    advance_gain: float = 1.0
    cull_after: int = 5
    cull_loss: float = 2.0
    max_training_epochs: int = 6
    blueprint_offset: int = 0  # rotation start, so episodes spread over blueprints
    germinations: int = 0

    def act(self, row: dict[str, Any], mask: list[bool], rng: random.Random) -> Decision:
        valid = [a for a, ok in zip(Action, mask, strict=True) if ok]
        greedy, rule = self.rule(row)
        if greedy not in valid:  # the rules never want an invalid action; fall back honestly
            greedy, rule = Action.WAIT, f"{rule}; {greedy.name} is not valid here, so wait"
        explored = rng.random() < self.epsilon
        action = rng.choice(valid) if explored else greedy
        prob = (1 - self.epsilon) * (action == greedy) + self.epsilon / len(valid)
        self.record(action)
        why = rule if not explored else f"exploration (epsilon={self.epsilon}); the rules said {greedy.name}: {rule}"
        return Decision(action=action, prob=prob, greedy=greedy, rule=why, explored=explored,
                        why_not={a.name: self.why_not(a, greedy, row) for a in valid if a != action})

    def record(self, action: Action) -> None:
        """Bookkeeping after an action is taken: germinations advance the blueprint rotation."""
        if action in GERMINATE:
            self.germinations += 1

    def rule(self, row: dict[str, Any]) -> tuple[Action, str]:
        """The greedy action and the rule that chose it, from the base features alone."""
        stage = SeedStage(int(row["seed_stage"])) if row["has_active_seed"] else None
        in_stage, gain = int(row["seed_epochs_in_stage"]), float(row["seed_improvement"])
        if stage is None:
            return self._germination_rule(row)
        if stage == SeedStage.GERMINATED:
            return Action.ADVANCE, "a germinated seed starts training in isolation at once"
        if stage == SeedStage.TRAINING:
            path_gain = row.get("seed_path_gain")
            return self._training_rule(in_stage, gain if path_gain is None else float(path_gain))
        if stage == SeedStage.BLENDING:
            if float(row["seed_alpha"]) < 1.0:
                return Action.WAIT, f"blending ramp in progress (alpha {float(row['seed_alpha']):.2f} < 1)"
            if gain > 0:
                return Action.FOSSILIZE, f"ramp complete and the seed added {gain:+.2f} points: keep it"
            return Action.CULL, f"ramp complete but the seed changed accuracy by {gain:+.2f} points: remove it"
        return Action.WAIT, f"seed is {stage.name.lower()}; nothing to decide"

    def _germination_rule(self, row: dict[str, Any]) -> tuple[Action, str]:
        epoch, plateau = int(row["epoch"]), int(row["plateau_epochs"])
        if int(row["available_slots"]) <= 0:
            return Action.WAIT, "no free slot"
        if epoch < self.min_epoch:
            return Action.WAIT, f"too early to intervene (epoch {epoch} < {self.min_epoch})"
        if plateau < self.plateau_epochs:
            return Action.WAIT, f"still improving (plateau {plateau} < {self.plateau_epochs} epochs)"
        blueprint = GERMINATE[(self.blueprint_offset + self.germinations) % len(GERMINATE)]
        return blueprint, (f"accuracy plateaued for {plateau} epochs at epoch {epoch} with a free slot: "
                           f"germinate ({blueprint.name.removeprefix('GERMINATE_').lower()} is next in rotation)")

    def _training_rule(self, in_stage: int, gain: float) -> tuple[Action, str]:
        """`gain`: the seed path's validation accuracy over the host's, when the environment measures
        it (`seed_path_gain`), else accuracy change since germination."""
        if in_stage >= self.advance_after and gain >= self.advance_gain:
            return Action.ADVANCE, (f"seed trained {in_stage} epochs and improves accuracy {gain:+.2f} points: "
                                    "blend it in")
        if in_stage >= self.cull_after and gain < -self.cull_loss:
            return Action.CULL, f"seed trained {in_stage} epochs and costs {gain:+.2f} points: cull"
        if in_stage >= self.max_training_epochs:
            return Action.CULL, f"seed trained {in_stage} epochs without earning an advance ({gain:+.2f}): cull"
        return Action.WAIT, f"seed training ({in_stage} epochs, {gain:+.2f} points): give it time"

    def why_not(self, action: Action, greedy: Action, row: dict[str, Any]) -> str:
        """One reason per rejected valid action, phrased from the same rule."""
        if action == greedy:
            return "the rules chose it, but exploration picked another action"
        if action in GERMINATE and greedy in GERMINATE:
            return f"{greedy.name.removeprefix('GERMINATE_').lower()} is next in the blueprint rotation"
        if action in GERMINATE:
            return self._germination_rule(row)[1] if not row["has_active_seed"] else "a seed is already live"
        if action == Action.WAIT:
            return f"the rules call for {greedy.name} now"
        if action == Action.CULL:
            return "the seed has not shown the loss that justifies culling"
        if action == Action.ADVANCE:
            return "the seed has not earned the next stage yet"
        if action == Action.FOSSILIZE:
            return "the seed has not yet shown a positive gain after a full ramp"
        return f"the rules call for {greedy.name}"


@dataclass
class NeverGerminate:
    """The no-intervention baseline: always WAIT."""

    def act(self, row: dict[str, Any], mask: list[bool], rng: random.Random) -> Decision:
        return Decision(action=Action.WAIT, prob=1.0, greedy=Action.WAIT, rule="baseline: never intervene")
