"""One annotated episode: the environment driven by the behaviour policy, every step explained.

`run_episode(spec, index, dataset)` returns the episode's row and its decision rows, ready for
`PackWriter.add_episode`. Everything random is drawn from streams keyed by (spec.rng_seed, index): the
scenario, the environment, the policy's exploration and the choice of counterfactual steps. So an
episode's content depends only on the spec and its index, never on which worker ran it or when
(given the same torch thread count: workers pin it to 1).

A decision row is the tracker's feature row after epoch t, then the decision taken on it: action,
mu(a|s), the valid-action mask, the reward of the epoch that followed, the decision context, and
the hindsight columns filled once the episode is over (see `annotations.hindsight`).
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipelines.environment.actions import Action
from pipelines.environment.datasets import Dataset
from pipelines.environment.morphogenetic_env import SLOT, EnvOptions, MorphogeneticEnv, episode_rng_seed
from pipelines.environment.primary_score import DEFINITION as PRIMARY_SCORE
from pipelines.environment.scenarios import REMEDIES, SCENARIOS, draw_scenario
from pipelines.generation.annotations import HINDSIGHT_EPOCHS, decision_context, hindsight, red_flags
from pipelines.generation.counterfactual import CONTINUATIONS, ActionValues, BranchPlan, action_values
from pipelines.generation.summary import EpisodeLog
from pipelines.policies.experts import EXPERT_GERMINATE_FROM, expert_action
from pipelines.policies.heuristic import Decision, HeuristicTamiyo, NeverGerminate
from pipelines.policies.learned_policy import LearnedPolicy, PolicyError
from telemetry import TelemetryConfig

POLICIES = ("heuristic", "never")  # besides these, `policy` may be the directory of a saved LearnedPolicy
# Counterfactual rollouts run to the episode's end unless a horizon is given (tests use a short one):
# a germinated seed leaves the host's output untouched until it blends, so a short horizon cuts off
# exactly the remedies the labels must credit.
COUNTERFACTUAL_EPOCHS: int | None = None
_EXPLORE_STREAM, _BRANCH_STREAM = 0xE9, 0xCF


@dataclass(frozen=True)
class GenerationSpec:
    """Everything an episode's content depends on, besides its index. Recorded in the manifest."""

    config: TelemetryConfig
    dataset: str = "digits_hard"
    data_dir: str | None = None
    rng_seed: int = 0
    epochs: int = 25
    device: str = "cpu"
    policy: str = "heuristic"  # a name in POLICIES, or a saved policy's directory
    policy_sha256: str | None = None  # a saved policy's weights checksum, so --resume cannot switch models
    epsilon: float = 0.1
    counterfactual_fraction: float = 0.5  # > 0: a dormant branch point per episode; each live stratum's chance
    counterfactual_epochs: int | None = COUNTERFACTUAL_EPOCHS  # horizon; None: to the episode's end
    counterfactual_continuation: str = CONTINUATIONS[0]
    hindsight_epochs: int = HINDSIGHT_EPOCHS
    scenarios: tuple[str, ...] = SCENARIOS
    options: EnvOptions = field(default_factory=EnvOptions)

    def describe(self) -> dict[str, Any]:
        """The spec as JSON-ready values; what `--resume` compares (the config is checked apart)."""
        out = asdict(self)
        out.pop("config")
        out["profile"] = self.config.profile_name
        out["scenarios"] = list(self.scenarios)
        out["counterfactual_horizon"] = ("episode_end" if self.counterfactual_epochs is None
                                         else f"{self.counterfactual_epochs} epochs")
        out["primary_score"] = PRIMARY_SCORE
        return out


@dataclass
class EpisodeResult:
    episode: dict[str, Any]
    steps: list[dict[str, Any]]


def episode_id(index: int) -> str:
    return f"ep-{index:06d}"


def _stream(spec: GenerationSpec, index: int, tag: int) -> int:
    return int(np.random.SeedSequence([spec.rng_seed, index, tag]).generate_state(1)[0])


def _policy(spec: GenerationSpec, index: int) -> HeuristicTamiyo | NeverGerminate | LearnedPolicy:
    if spec.policy == "never":
        return NeverGerminate()
    if spec.policy == "heuristic":
        return HeuristicTamiyo(epsilon=spec.epsilon, blueprint_offset=index % 4)
    return load_policy(spec.policy, spec.policy_sha256).for_episode()  # a GRU's state starts empty


@functools.lru_cache(maxsize=4)
def load_policy(directory: str, weights_sha256: str | None) -> LearnedPolicy:
    """A saved policy, loaded once per process; refused if its weights are not the ones the run named."""
    policy = LearnedPolicy.load(directory)
    if weights_sha256 is not None and policy.weights_sha256 != weights_sha256:
        raise PolicyError(f"{directory}: the policy's weights changed since this run started "
                          f"(sha256 {policy.weights_sha256[:12]}..., run has {weights_sha256[:12]}...)")
    return policy


def run_episode(spec: GenerationSpec, index: int, dataset: Dataset) -> EpisodeResult:
    scenario = draw_scenario(spec.rng_seed, index, spec.scenarios)
    rng_seed = episode_rng_seed(spec.rng_seed, index)
    env = MorphogeneticEnv(dataset, scenario, spec.config, rng_seed=rng_seed, epochs=spec.epochs,
                           device=spec.device, options=spec.options)
    policy = _policy(spec, index)
    explore = random.Random(_stream(spec, index, _EXPLORE_STREAM))
    plan = BranchPlan(np.random.default_rng(_stream(spec, index, _BRANCH_STREAM)), spec.counterfactual_fraction,
                      spec.epochs)
    log = EpisodeLog(slot=SLOT)
    steps: list[dict[str, Any]] = []
    accuracies: list[float] = []
    try:
        row = env.reset()
        accuracies.append(env.accuracy)
        done = False
        while not done:
            t = env.epoch
            mask = env.valid_mask()
            valid = [a for a in Action if mask[a]]
            counter = (action_values(env, valid, REMEDIES.get(scenario.name), spec.counterfactual_continuation,
                                     spec.counterfactual_epochs)
                       if len(valid) > 1 and plan.branch(env) else None)
            expert = expert_action(env, REMEDIES.get(scenario.name), germinate_from=EXPERT_GERMINATE_FROM)
            view = env.policy_view(row)
            decision = policy.act(view, list(mask), explore)
            context = decision_context(view, decision.rule, decision.why_not)
            log.observe(t, row, "non_finite_training" in context.red_flags)
            log.act(t, decision.action, env.slot.stage.name, env.accuracy)
            steps.append(_decision_row(row, decision, mask, context, counter, expert))
            row, reward, done, _ = env.step(decision.action)
            accuracies.append(env.accuracy)
            steps[-1].update(reward=reward["total"], reward_accuracy=reward["accuracy_delta"],
                             reward_cost=reward["param_cost"])
        log.observe_divergence(env.epoch, "non_finite_training" in red_flags(row))  # the last epoch's row
        log.finish(env.epoch, env.accuracy, env.slot.stage.name)
        _fill_hindsight(steps, accuracies, spec.hindsight_epochs)
        episode = _episode_row(spec, index, rng_seed, scenario.params(), log, accuracies, env)
    finally:
        env.close()
    return EpisodeResult(episode=episode, steps=steps)


def _decision_row(row: dict[str, Any], decision: Decision, mask: np.ndarray, context: Any,
                  counter: ActionValues | None, expert: Action) -> dict[str, Any]:
    out = dict(row)
    out.update(
        action=decision.action.name,
        behaviour_prob=decision.prob,
        action_mask=[bool(v) for v in mask],
        narrative=context.narrative,
        red_flags=context.red_flags,
        opportunities=context.opportunities,
        why_this_action=context.why_this_action,
        why_not_alternatives=context.why_not_alternatives,
        counterfactual=None if counter is None else [
            {"action": a, "value": v, "accuracy": counter.accuracy[a], "cost": counter.cost[a]}
            for a, v in counter.value.items()],
        best_action=None if counter is None else counter.best_action,
        best_actions=None if counter is None else counter.best,
        counterfactual_epochs=None if counter is None else counter.epochs,
        counterfactual_stratum=None if counter is None else counter.stratum,
        expert_action=expert.name,
    )
    return out


def _fill_hindsight(steps: list[dict[str, Any]], accuracies: list[float], k: int) -> None:
    """Accuracy h = min(k, epochs left) epochs after each decision, and whether it was good (rule in
    annotations.hindsight); with counterfactual values, the decision is judged by its action's value."""
    for t, step in enumerate(steps):
        h = min(k, len(accuracies) - 1 - t)
        counter = {c["action"]: c["value"] for c in step["counterfactual"] or []}
        later, good = hindsight(accuracies, t, step["action"], k=h, counterfactual=counter or None)
        step.update(hindsight_accuracy=later, hindsight_epochs=h, was_good_decision=good)


def _episode_row(spec: GenerationSpec, index: int, rng_seed: int, params: dict[str, Any], log: EpisodeLog,
                 accuracies: list[float], env: MorphogeneticEnv) -> dict[str, Any]:
    seed_module = env.model.seed_slots()[SLOT]
    return {
        "episode_id": episode_id(index),
        "episode_index": index,
        "seed": rng_seed,
        "scenario": params["name"],
        "scenario_params": json.dumps(params, sort_keys=True),
        "epochs": spec.epochs,
        "final_accuracy": accuracies[-1],
        "best_accuracy": max(accuracies),
        "outcome": log.outcome,
        "trajectory": log.trajectory,
        "key_moments": log.moments,
        "seed_outcomes": log.seed_outcomes(),
        "params_added": 0 if seed_module is None else sum(p.numel() for p in seed_module.parameters()),
        "diverged": log.diverged,
    }
