"""The scripted policies the labels and the control check rest on: commit, the expert, schedules."""

from __future__ import annotations

import pytest
import torch

from pipelines.environment.actions import Action
from pipelines.environment.datasets import load_dataset
from pipelines.environment.morphogenetic_env import EnvOptions, MorphogeneticEnv
from pipelines.environment.scenarios import REMEDIES, SCENARIOS, make_scenario
from pipelines.policies.experts import FixedBlueprintHeuristic, commit_action, expert_action, schedule_action
from telemetry import SeedStage, load_config


@pytest.fixture
def env():
    torch.set_num_threads(1)
    env = MorphogeneticEnv(load_dataset("synthetic", num_samples=200), make_scenario("lr_too_low"),
                           load_config("minimal"), rng_seed=3, epochs=12, options=EnvOptions(ramp_epochs=2))
    env.reset()
    yield env
    env.close()


def test_every_cause_has_a_remedy_entry_and_two_stalls_need_different_seeds():
    assert set(REMEDIES) == set(SCENARIOS)
    assert REMEDIES["lr_too_low"] != REMEDIES["vanishing_gradients"] == REMEDIES["dead_units"] == "norm"


def test_commit_finishes_the_live_seed_on_schedule_and_never_germinates(env):
    assert commit_action(env) == Action.WAIT  # a free slot stays free
    env.step(schedule_action(env, "conv", germinate_at=0))
    stages = []
    while not env.done:
        env.step(commit_action(env))
        stages.append((env.slot.stage, env.slot.lifecycle.epochs_in_stage))
    assert stages[0] == (SeedStage.TRAINING, 1) and (SeedStage.TRAINING, 3) in stages
    assert stages[-1][0] == SeedStage.FOSSILIZED  # 1 + 3 training + 2 ramp epochs fit in 11 decisions


def test_expert_culls_a_wrong_seed_and_plants_the_remedy(env):
    env.step(Action.GERMINATE_NORM)
    assert expert_action(env, REMEDIES["lr_too_low"]) == Action.CULL
    env.step(Action.CULL)
    assert expert_action(env, REMEDIES["lr_too_low"]) == Action.GERMINATE_CONV
    assert expert_action(env, None) == Action.WAIT  # no remedy: wait
    assert expert_action(env, "conv", germinate_from=99) == Action.WAIT  # not before its epoch


def test_fixed_blueprint_heuristic_always_plants_its_blueprint():
    row = {"epoch": 9, "plateau_epochs": 5, "available_slots": 1, "has_active_seed": 0, "seed_stage": 0,
           "seed_epochs_in_stage": 0, "seed_improvement": 0.0}
    tamiyo = FixedBlueprintHeuristic(epsilon=0.0, blueprint="norm")
    for germinations in range(4):
        tamiyo.germinations = germinations
        action, why = tamiyo.rule(row)
        assert action == Action.GERMINATE_NORM and "always" in why
