"""Playing episodes to their end under a chooser: what the control check and the comparison's
evaluation set share.

A chooser maps (environment, feature row) to an action. `play_out` drives one episode with it and
returns the episode's primary score and the actions taken (WAIT left out), as "epoch:ACTION".
`PlayTask` runs such plays on an engine, one key per play, loading the data set once per worker and
keeping torch on one thread (the engine's workers are the parallelism).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from pipelines.environment.actions import Action
from pipelines.environment.datasets import Dataset, load_dataset
from pipelines.environment.morphogenetic_env import MorphogeneticEnv
from pipelines.environment.primary_score import PrimaryScore
from pipelines.environment.scenarios import REMEDIES
from pipelines.generation.engine import Task
from pipelines.generation.episode_task import one_thread
from pipelines.policies.experts import EXPERT_GERMINATE_FROM, TRAIN_EPOCHS, expert_action
from pipelines.policies.heuristic import HeuristicTamiyo
from pipelines.policies.learned_policy import LearnedPolicy

Choose = Callable[[MorphogeneticEnv, dict[str, Any]], Action]


def play_out(env: MorphogeneticEnv, choose: Choose) -> tuple[PrimaryScore, list[str]]:
    """The episode driven to its end by `choose`; the environment is closed whatever happens."""
    actions: list[str] = []
    try:
        row, done = env.reset(), False
        while not done:
            action = choose(env, row)
            if action != Action.WAIT:
                actions.append(f"{env.epoch}:{action.name}")
            row, _, done, _ = env.step(action)
        return env.primary_score(), actions
    finally:
        env.close()


def never(env: MorphogeneticEnv, row: dict[str, Any]) -> Action:
    return Action.WAIT


def policy_chooser(policy: HeuristicTamiyo | LearnedPolicy) -> Choose:
    """A policy's greedy choice (a heuristic with epsilon 0, or a learned policy) as a chooser."""
    unused = random.Random(0)  # act() draws from it; greedy, the draw changes nothing
    return lambda env, row: policy.act(env.policy_view(row), list(env.valid_mask()), unused).action


def expert_chooser(cause: str, train_epochs: int = TRAIN_EPOCHS) -> Choose:
    """The privileged expert: plants the cause's remedy from EXPERT_GERMINATE_FROM, waits where none."""
    remedy = REMEDIES[cause]
    return lambda env, row: expert_action(env, remedy, germinate_from=EXPERT_GERMINATE_FROM,
                                          train_epochs=train_epochs)


class PlayTask(Task):
    """Key i is the i-th play; subclasses say what it is (`play`) and which data set it needs."""

    def __init__(self, dataset: str, data_dir: str | None) -> None:
        self.dataset_name, self.data_dir = dataset, data_dir
        self._dataset: Dataset | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    def setup(self) -> None:
        if self._dataset is None:
            self._dataset = load_dataset(self.dataset_name, self.data_dir)

    def __call__(self, key: int) -> dict[str, Any]:
        self.setup()
        assert self._dataset is not None
        with one_thread():
            return self.play(key, self._dataset)

    def play(self, key: int, dataset: Dataset) -> dict[str, Any]:
        raise NotImplementedError
