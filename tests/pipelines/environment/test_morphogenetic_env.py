"""The episode runner: determinism, counterfactual branches, actions, rewards, scenarios."""

from __future__ import annotations

import math
import random
from dataclasses import asdict

import numpy as np
import pytest
import torch

from pipelines.environment.actions import Action
from pipelines.environment.datasets import load_dataset
from pipelines.environment.morphogenetic_env import EnvOptions, InvalidAction, MorphogeneticEnv, episode_rng_seed
from pipelines.environment.scenarios import SCENARIOS, Scenario, draw_scenario, make_scenario
from telemetry.config import load_config
from telemetry.seed_status import SeedStage

EPOCHS = 9
SCHEDULE = {1: Action.GERMINATE_CONV, 2: Action.ADVANCE, 4: Action.ADVANCE, 6: Action.FOSSILIZE}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", num_samples=200)


def make_env(data, seed=7, profile="diagnostic", scenario=None, epochs=EPOCHS, **options):
    opts = EnvOptions(batch_size=64, ramp_epochs=2, **options)
    return MorphogeneticEnv(data, scenario or Scenario(), load_config(profile), rng_seed=seed, epochs=epochs,
                            options=opts)


def action_at(step: int, env: MorphogeneticEnv) -> Action:
    action = SCHEDULE.get(step, Action.WAIT)
    return action if env.valid_mask()[action] else Action.WAIT


def play(env: MorphogeneticEnv, plan=action_at) -> list[dict]:
    rows = [env.reset()]
    done, step = False, 1
    while not done:
        row, _, done, _ = env.step(plan(step, env))
        rows.append(row)
        step += 1
    env.close()
    return rows


def same(a: object, b: object) -> bool:
    """Bit-exact equality where NaN equals NaN (an unmeasured value must match too)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_rows_equal(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        assert a.keys() == b.keys()
        diff = [k for k in a if not same(a[k], b[k])]
        assert not diff, f"row {i} differs in {diff[:5]}"


def test_an_episode_runs_the_lifecycle(data):
    env = make_env(data)
    rows = play(env)
    assert len(rows) == EPOCHS and [r["epoch"] for r in rows] == list(range(EPOCHS))
    stages = [r["seed_stage"] for r in rows]
    assert stages[1] == SeedStage.GERMINATED and stages[2] == SeedStage.TRAINING
    assert stages[4] == SeedStage.BLENDING and stages[-1] == SeedStage.FOSSILIZED
    assert [r["seed_alpha"] for r in rows[4:6]] == [0.5, 1.0]
    assert rows[0]["available_slots"] == 1 and rows[1]["available_slots"] == 0
    assert rows[-1]["has_active_seed"] == 0 and rows[3]["has_active_seed"] == 1
    assert rows[3]["seed_slot2_grad_norm"] > 0  # the seed trains in isolation
    assert rows[0]["seed_slot2_grad_norm"] is None


def test_same_seed_same_rows_different_seed_different_rows(data):
    first = play(make_env(data, seed=3))
    torch.manual_seed(123)  # global RNG state must not matter
    np.random.seed(5)
    random.seed(9)
    assert_rows_equal(first, play(make_env(data, seed=3)))
    other = play(make_env(data, seed=4))
    assert any(not same(a["val_loss"], b["val_loss"]) for a, b in zip(first, other, strict=True))


def test_reset_starts_the_same_episode_again(data):
    env = make_env(data, profile="minimal")
    first = play(env)
    assert_rows_equal(first, play(env))


@pytest.mark.parametrize(("branch_at", "branch_plan"), [
    (1, [Action.GERMINATE_NORM, Action.ADVANCE, Action.ADVANCE]),   # dormant at the snapshot
    (3, [Action.CULL, Action.GERMINATE_ATTENTION, Action.WAIT]),    # a training seed at the snapshot
    (5, [Action.WAIT, Action.FOSSILIZE, Action.WAIT]),              # blending at the snapshot
])
def test_counterfactual_branch_leaves_the_main_episode_unchanged(data, branch_at, branch_plan):
    reference = play(make_env(data, seed=11, profile="research"))
    env = make_env(data, seed=11, profile="research")
    rows = [env.reset()]
    for step in range(1, EPOCHS):
        if step == branch_at:
            state = env.snapshot()
            for _ in range(2):  # two branches from the same snapshot
                branch = [env.step(a if env.valid_mask()[a] else Action.WAIT)[0] for a in branch_plan]
                assert len(branch) == len(branch_plan)
                env.restore(state)
        rows.append(env.step(action_at(step, env))[0])
    env.close()
    assert_rows_equal(reference, rows)


def test_restore_returns_to_the_exact_state(data):
    env = make_env(data, profile="standard")
    env.reset()
    env.step(Action.GERMINATE_DEPTHWISE)
    env.step(Action.ADVANCE)
    state = env.snapshot()
    after = env.step(Action.ADVANCE)[0]
    env.restore(state)
    assert env.slot.stage == SeedStage.TRAINING and env.epoch == 2
    assert_rows_equal([after], [env.step(Action.ADVANCE)[0]])


def test_invalid_actions_raise_and_change_nothing(data):
    env = make_env(data, profile="minimal")
    env.reset()
    with pytest.raises(InvalidAction, match="ADVANCE is not valid while the seed is DORMANT; valid: WAIT, G"):
        env.step(Action.ADVANCE)
    assert env.epoch == 0
    env.step(Action.GERMINATE_CONV)
    with pytest.raises(InvalidAction, match="GERMINATE_NORM"):
        env.step(Action.GERMINATE_NORM)
    env.step(Action.ADVANCE)
    env.step(Action.ADVANCE)
    with pytest.raises(InvalidAction, match="FOSSILIZE is not valid while the seed is BLENDING"):
        env.step(Action.FOSSILIZE)  # the ramp has one epoch to go


def test_germinate_registers_and_cull_removes_seed_parameters(data):
    env = make_env(data, profile="minimal")
    env.reset()
    assert len(env.optimizer.param_groups) == 1
    assert env.step(Action.GERMINATE_CONV)[3]["isolated_seed_loss"] is None  # germinated: inert
    seed = env.slot.seed
    assert {id(p) for p in env.optimizer.param_groups[1]["params"]} == {id(p) for p in seed.parameters()}
    assert env.step(Action.ADVANCE)[3]["isolated_seed_loss"] > 0  # training: learns in isolation
    env.step(Action.CULL)
    assert env.slot.seed is None and len(env.optimizer.param_groups) == 1
    assert not any(id(p) in {id(q) for q in seed.parameters()} for p in env.optimizer.state)
    assert env.valid_mask()[Action.GERMINATE_NORM]


def test_rewards_and_end_of_episode(data):
    env = make_env(data, profile="minimal", epochs=4)
    first = env.reset()
    total, done = 0.0, False
    while not done:
        row, reward, done, info = env.step(Action.WAIT)
        assert reward["total"] == pytest.approx(reward["accuracy_delta"] + reward["param_cost"])
        total += reward["accuracy_delta"]
    assert total == pytest.approx(row["val_accuracy"] - first["val_accuracy"])
    assert info["val_accuracy"] == pytest.approx(row["val_accuracy"])
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(Action.WAIT)


def test_seed_parameters_cost_reward(data):
    env = make_env(data, profile="minimal", param_cost=1.0)
    env.reset()
    _, reward, _, info = env.step(Action.GERMINATE_CONV)
    assert info["seed_parameter_share"] > 0
    assert reward["param_cost"] == pytest.approx(-info["seed_parameter_share"])


def test_scenarios_are_drawn_from_seed_and_episode():
    draws = [draw_scenario(0, e) for e in range(60)]
    assert draws == [draw_scenario(0, e) for e in range(60)]
    assert {s.name for s in draws} == set(SCENARIOS)
    assert draws != [draw_scenario(1, e) for e in range(60)]
    assert episode_rng_seed(0, 1) == episode_rng_seed(0, 1) != episode_rng_seed(0, 2)


def test_each_scenario_breaks_training_in_its_own_way():
    healthy = make_scenario("healthy")
    assert make_scenario("lr_too_low").lr < healthy.lr / 10
    assert make_scenario("lr_too_high").lr > healthy.lr * 10
    assert make_scenario("vanishing_gradients").init_scale < 0.1
    assert make_scenario("dead_units").dead_shift <= -3.0
    over = make_scenario("overfitting")
    assert over.train_fraction < 0.5
    assert set(asdict(healthy)) == set(healthy.params())
    with pytest.raises(ValueError, match="unknown scenario 'typo'"):
        make_scenario("typo")


def test_scenario_shapes_the_episode_but_never_the_features(data):
    small = Scenario(name="overfitting", train_fraction=0.25, label_noise=0.5)
    env = make_env(data, profile="diagnostic", scenario=small)
    row = env.reset()
    assert len(env.y_train) == round(len(data.y_train) * 0.25)
    assert (env.y_train != data.y_train[: len(env.y_train)]).any()
    assert not any(word in name for name in row for word in ("scenario", "label_noise", "init_scale"))
    plain = make_env(data, profile="diagnostic")
    assert list(row) == list(plain.reset())  # the same schema whatever the cause
    narrow = make_env(data, profile="diagnostic", scenario=Scenario(width=0.5))
    assert list(narrow.reset()) == list(row)
    for e in (env, plain, narrow):
        e.close()


def test_seed_path_accuracy_is_the_host_with_the_seed_fully_blended(data):
    """Only a TRAINING seed is evaluated; its accuracy equals the same weights run with the seed's
    output in place of the slot's (a copy of the host with the seed fossilized, alpha = 1)."""
    import copy

    env = make_env(data)
    env.reset()
    assert env.policy_view({})["seed_path_gain"] is None
    env.step(Action.GERMINATE_CONV)
    assert env.seed_path_accuracy is None  # GERMINATED: not yet trained
    env.step(Action.ADVANCE)
    assert env.slot.stage == SeedStage.TRAINING
    twin = copy.deepcopy(env.model).eval()
    twin.slot2.lifecycle.stage = SeedStage.FOSSILIZED
    with torch.no_grad():
        expected = 100.0 * int((twin(env.x_val).argmax(1) == env.y_val).sum()) / len(env.y_val)
    assert env.seed_path_accuracy == pytest.approx(expected, abs=1e-9)
    assert env.policy_view({})["seed_path_gain"] == pytest.approx(expected - env.accuracy, abs=1e-9)
    env.close()
