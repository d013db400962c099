"""No single feature of the minimal profile names the hidden cause (issue 12).

Rows of the never-intervening policy, every cause alike (stratified episodes), are probed one
feature at a time by a depth-3 decision tree, cross-validated with folds by episode (each fold holds
one episode of every cause). Two rules:

1. structural features (epoch and step counters, slot and seed state, the lifecycle group, which
   under `never` describe no seed) are at chance: multi-class accuracy <= 1/6 + 0.05 and every
   one-vs-rest balanced accuracy <= 0.6. A cause that changed the optimizer steps per epoch would
   show in `global_step` (the old overfitting leak scored 1.0);
2. no feature identifies one cause: every one-vs-rest balanced accuracy < 0.95. Losses and
   accuracies are legitimately informative (a stall is a stall), so "above chance" is not the rule
   for them; giving a cause away outright is.

KNOWN_LEAKS lists the exceptions, so that any other fails the test; it is empty. Until 2026-12-03
it held ("train_loss", "lr_too_low"): with the host rate 300-1000x below nominal, lr_too_low's host
barely left its random initialisation and its training loss sat in a band (2.31-2.35 nats) the other
stalls do not reach (they sit at ln 10 = 2.3026); this probe scored it 1.00. The rate range now
reaches 1/60 of nominal, so some lr_too_low hosts learn slowly and their loss crosses the other
stalls' values, while the conv seed still rescues them (docs/experiments/control-check-v3.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.tree import DecisionTreeClassifier

from pipelines.environment.actions import Action
from pipelines.environment.datasets import load_dataset
from pipelines.environment.morphogenetic_env import MorphogeneticEnv, episode_rng_seed
from pipelines.environment.scenarios import SCENARIOS, make_scenario
from telemetry import load_config

EPISODES_PER_CAUSE, EPOCHS = 4, 10
STRUCTURAL_GROUPS = ("lifecycle",)
KNOWN_LEAKS: set[tuple[str, str]] = set()
STRUCTURAL_BASE = ("epoch", "global_step", "has_active_seed", "seed_stage", "seed_epochs_in_stage", "seed_alpha",
                   "seed_improvement", "available_slots")


@pytest.fixture(scope="module")
def rows():
    """(feature matrix, cause index, fold, names) of never-policy episodes, stratified by cause."""
    torch.set_num_threads(1)
    ds, config = load_dataset("digits_hard"), load_config("minimal")
    x, cause, fold = [], [], []
    for c, name in enumerate(SCENARIOS):
        for k in range(EPISODES_PER_CAUSE):
            episode = c + len(SCENARIOS) * k
            env = MorphogeneticEnv(ds, make_scenario(name, 2, episode), config,
                                   rng_seed=episode_rng_seed(2, episode), epochs=EPOCHS)
            found, done = [env.reset()], False
            while not done:
                row, _, done, _ = env.step(Action.WAIT)
                found.append(row)
            env.close()
            x += [[np.nan if r[n] is None else float(r[n]) for n in config_names(env)] for r in found]
            cause += [c] * len(found)
            fold += [k] * len(found)
    return np.nan_to_num(np.array(x), nan=-1e9), np.array(cause), np.array(fold), config_names(env)


def config_names(env: MorphogeneticEnv) -> list[str]:
    return list(env.tracker.schema.names)


def _predict(feature: np.ndarray, target: np.ndarray, fold: np.ndarray, balanced: bool) -> np.ndarray:
    out = np.empty_like(target)
    for k in np.unique(fold):
        tree = DecisionTreeClassifier(max_depth=3, random_state=0, class_weight="balanced" if balanced else None)
        tree.fit(feature[fold != k, None], target[fold != k])
        out[fold == k] = tree.predict(feature[fold == k, None])
    return out


def _probe(feature: np.ndarray, cause: np.ndarray, fold: np.ndarray) -> tuple[float, dict[str, float]]:
    """Multi-class accuracy and the one-vs-rest balanced accuracy per cause of one feature."""
    accuracy = float((_predict(feature, cause, fold, balanced=False) == cause).mean())
    one_vs_rest = {name: float(balanced_accuracy_score(cause == c, _predict(feature, cause == c, fold, balanced=True)))
                   for c, name in enumerate(SCENARIOS)}
    return accuracy, one_vs_rest


def test_no_single_feature_names_the_cause(rows):
    x, cause, fold, names = rows
    groups = load_config("minimal")
    assert len(names) == x.shape[1] and groups.lifecycle.enabled
    lifecycle = set(names[27:])
    structural = set(STRUCTURAL_BASE) | lifecycle
    report = {n: _probe(x[:, i], cause, fold) for i, n in enumerate(names)}
    at_chance = {n: v for n, v in report.items()
                 if n in structural and (v[0] > 1 / 6 + 0.05 or max(v[1].values()) > 0.6)}
    assert not at_chance, f"structural features that know the cause: {at_chance}"
    giveaway = {(n, c): b for n, v in report.items() for c, b in v[1].items() if b >= 0.95}
    assert set(giveaway) <= KNOWN_LEAKS, f"features that identify a cause (one-vs-rest >= 0.95): {giveaway}"
    informative = max(v[0] for n, v in report.items() if n not in structural)
    assert informative > 1 / 6 + 0.1  # the probe itself works: losses do carry evidence


def test_the_probe_would_catch_a_step_count_that_depends_on_the_cause(rows):
    """The old environment's leak, re-created: steps per epoch proportional to the training set."""
    x, cause, fold, names = rows
    epoch = x[:, names.index("epoch")]
    per_epoch = np.where(cause == SCENARIOS.index("overfitting"), 1.0, 7.0)
    assert _probe((epoch + 1) * per_epoch, cause, fold)[1]["overfitting"] >= 0.95
