"""The environment's design guarantees (issue 12): the held-out test split, constant optimizer steps
per epoch whatever the cause, and the primary score's cost term."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines.environment.actions import Action
from pipelines.environment.datasets import load_dataset
from pipelines.environment.morphogenetic_env import MorphogeneticEnv, episode_rng_seed
from pipelines.environment.primary_score import HeldOutSplitError
from pipelines.environment.scenarios import SCENARIOS, make_scenario
from pipelines.policies.experts import commit_action
from telemetry import load_config


@pytest.fixture(scope="module")
def hard():
    return load_dataset("digits_hard")


def make_env(ds, cause: str = "healthy", episode: int = 0, epochs: int = 6) -> MorphogeneticEnv:
    torch.set_num_threads(1)
    return MorphogeneticEnv(ds, make_scenario(cause, 0, episode), load_config("minimal"),
                            rng_seed=episode_rng_seed(0, episode), epochs=epochs)


class Sealed:
    """A tensor that raises on any read until `open` is set: proves who reads the test split when."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor, self.open = tensor, False

    def _check(self) -> torch.Tensor:
        if not self.open:
            raise AssertionError("the held-out test split was read before the final score")
        return self._tensor

    def __getitem__(self, index):
        return self._check()[index]

    def __len__(self) -> int:
        return len(self._check())

    def __getattr__(self, name: str):
        return getattr(self._check(), name)


def test_digits_hard_has_three_disjoint_stratified_splits(hard):
    assert (len(hard.y_train), len(hard.y_val), len(hard.y_test)) == (899, 359, 539)
    rows = torch.cat([hard.x_train, hard.x_val, hard.x_test]).flatten(1)
    assert len(torch.unique(rows, dim=0)) == 1797  # no image in two splits (the noise makes each unique)
    for y in (hard.y_val, hard.y_test):
        assert set(np.bincount(y.numpy(), minlength=10)) <= set(range(int(0.9 * len(y) / 10), len(y) // 10 + 3))
    assert load_dataset("digits_hard").x_test.equal(hard.x_test)  # the same noise in every process


@pytest.mark.parametrize("cause", SCENARIOS)
def test_optimizer_steps_per_epoch_do_not_depend_on_the_cause(hard, cause):
    env = make_env(hard, cause, epochs=3)
    rows = [env.reset(), env.step(Action.WAIT)[0]]
    assert [r["global_step"] for r in rows] == [12, 24]  # overfitting's small training set included
    env.close()


def test_the_test_split_is_never_read_before_the_final_score(hard):
    x, y = Sealed(hard.x_test), Sealed(hard.y_test)
    env = make_env(replace(hard, x_test=x, y_test=y), "vanishing_gradients", epochs=11)
    env.reset()
    done = False
    while not done:  # a seed's whole lifecycle: germinate, train (seed path evaluated), blend, fossilize
        action = Action.GERMINATE_NORM if env.epoch == 1 else commit_action(env)
        _, _, done, _ = env.step(action)
        if not done:
            with pytest.raises(HeldOutSplitError, match="after the episode's last epoch"):
                env.primary_score()
    assert env.slot.stage.name == "FOSSILIZED"
    x.open = y.open = True
    score = env.primary_score()
    correct = (env.model.eval()(hard.x_test).argmax(1) == hard.y_test).sum().item()
    assert score.test_accuracy == pytest.approx(100.0 * correct / 539)
    env.close()


def test_primary_score_charges_parameter_epochs(hard):
    env = make_env(hard, epochs=7)
    env.reset()
    shares, done = [], False
    while not done:
        action = Action.GERMINATE_CONV if env.epoch == 1 else commit_action(env)
        _, _, done, _ = env.step(action)
        shares.append(env.seed_parameter_share())
    score = env.primary_score()
    assert sum(shares) > 0 and score.param_epochs == pytest.approx(sum(shares))
    assert score.score == pytest.approx(score.test_accuracy - 0.1 * sum(shares))
    env.close()


def test_a_dataset_without_a_test_split_has_no_primary_score():
    env = make_env(load_dataset("synthetic", num_samples=200), epochs=2)
    env.reset()
    env.step(Action.WAIT)
    with pytest.raises(HeldOutSplitError, match="no held-out test split"):
        env.primary_score()
    env.close()
