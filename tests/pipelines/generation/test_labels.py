"""Counterfactual labels: every valid action's value, to the episode end under the replant
continuation, equal to an independent rollout; ties explicit; branch points over the lifecycle."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from pipelines.cli import main
from pipelines.environment.actions import Action
from pipelines.environment.datasets import load_dataset
from pipelines.environment.morphogenetic_env import MorphogeneticEnv, episode_rng_seed
from pipelines.environment.scenarios import REMEDIES, draw_scenario
from telemetry import SeedStage, load_config
from telemetry.packs import read_manifest
from telemetry.packs.reader import open_pack

EPOCHS, SEED, EPISODES = 7, 11, 2


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("labels") / "pack"
    argv = ["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", str(EPOCHS), "--seed", str(SEED),
            "--episodes", str(EPISODES), "--epsilon", "0.6", "--counterfactual", "1", "--workers", "1", "--quiet",
            "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return out


# ---- an independent reference: replay from scratch (no snapshot), own continuation rules ------------

def _commit(env: MorphogeneticEnv) -> Action:
    stage, life = env.slot.stage, env.slot.lifecycle
    if stage == SeedStage.GERMINATED or (stage == SeedStage.TRAINING and life.epochs_in_stage >= 3):
        return Action.ADVANCE
    if stage == SeedStage.BLENDING and life.ramp_complete:
        return Action.FOSSILIZE
    return Action.WAIT


def _replant(env: MorphogeneticEnv, remedy: str | None) -> Action:
    live = env.slot.seed is not None and env.slot.stage != SeedStage.FOSSILIZED
    if live and env.slot.lifecycle.blueprint != remedy:
        return Action.CULL
    if remedy is not None and env.slot.can_germinate:
        return Action.germinate(remedy)
    return _commit(env)


def _share(env: MorphogeneticEnv) -> float:
    seed = env.slot.seed
    host = sum(p.numel() for n, p in env.model.named_parameters() if ".seed." not in n)
    return 0.0 if seed is None else sum(p.numel() for p in seed.parameters()) / host


def reference_value(index: int, taken: list[str], step: int, action: str) -> float:
    """Replay episode `index` from its seed with the pack's actions up to `step`, then `action`, then
    the replant continuation to the end: final validation accuracy - 0.1 x seed parameter-epochs."""
    scenario = draw_scenario(SEED, index)
    env = MorphogeneticEnv(load_dataset("synthetic"), scenario, load_config("minimal"),
                           rng_seed=episode_rng_seed(SEED, index), epochs=EPOCHS)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the generation workers
    try:
        env.reset()
        for name in taken[:step]:
            env.step(Action[name])
        first, cost, done = Action[action], 0.0, False
        _, _, done, _ = env.step(first)
        cost += _share(env)
        while not done:
            nxt = _replant(env, REMEDIES[scenario.name]) if first == Action.CULL else _commit(env)
            _, _, done, _ = env.step(nxt)
            cost += _share(env)
        return env.accuracy - 0.1 * cost
    finally:
        torch.set_num_threads(previous)
        env.close()


def test_every_valid_action_has_a_value_equal_to_an_independent_rollout(pack):
    steps = open_pack(pack).steps(columns=["episode_id", "step", "action", "action_mask", "counterfactual",
                                           "counterfactual_epochs", "best_action", "best_actions"]).to_pylist()
    vocabulary = [a.name for a in Action]
    checked = 0
    for index in range(EPISODES):
        rows = sorted((r for r in steps if r["episode_id"] == f"ep-{index:06d}"), key=lambda r: r["step"])
        taken = [r["action"] for r in rows]
        for r in rows:
            if not r["counterfactual"]:
                continue
            valid = [a for a, ok in zip(vocabulary, r["action_mask"], strict=True) if ok]
            values = {c["action"]: c["value"] for c in r["counterfactual"]}
            assert sorted(values) == sorted(valid)  # every valid action, nothing else
            assert r["counterfactual_epochs"] == EPOCHS - 1 - r["step"]  # to the episode's end
            for c in r["counterfactual"]:
                assert c["value"] == pytest.approx(c["accuracy"] - c["cost"], abs=1e-4)
                expected = reference_value(index, taken, r["step"], c["action"])
                assert c["value"] == pytest.approx(expected, abs=1e-4), (index, r["step"], c["action"])
                checked += 1
            top = max(values.values())
            assert r["best_actions"] == [a for a in vocabulary if a in values and values[a] == top]
            assert r["best_action"] == (r["best_actions"][0] if len(r["best_actions"]) == 1 else None)
    assert checked >= 10


def test_branch_points_cover_the_lifecycle_and_the_manifest_says_how_labels_were_made(pack):
    strata = open_pack(pack).steps(columns=["counterfactual_stratum"]).column(0).drop_null().to_pylist()
    assert {"dormant", "training"} <= set(strata)
    counts = {s: strata.count(s) for s in set(strata)}
    assert all(n <= EPISODES for n in counts.values())  # at most one branch point per stratum and episode
    generation = read_manifest(pack).provenance.model_extra["generation"]
    assert generation["counterfactual_continuation"] == "replant"
    assert generation["counterfactual_horizon"] == "episode_end"
    assert "held-out test accuracy" in generation["primary_score"]
    assert generation["options"]["param_cost"] == 0.1 and generation["options"]["batches_per_epoch"] == 12
    json.dumps(generation)  # plain JSON


def test_ties_are_an_explicit_set_never_a_silent_wait():
    """At a complete ramp, FOSSILIZE and WAIT give the same forward: both are best, none is chosen."""
    from pipelines.generation.counterfactual import action_values

    env = MorphogeneticEnv(load_dataset("synthetic", num_samples=300), draw_scenario(0, 0, ("healthy",)),
                           load_config("minimal"), rng_seed=1, epochs=12)
    env.reset()
    for action in [Action.GERMINATE_ATTENTION, Action.ADVANCE, Action.WAIT, Action.WAIT, Action.ADVANCE,
                   Action.WAIT, Action.WAIT]:
        env.step(action)
    assert env.slot.lifecycle.ramp_complete
    labels = action_values(env, [a for a in Action if env.valid_mask()[a]], remedy=None)
    assert labels.stratum == "ramp_complete"
    assert labels.value["WAIT"] == labels.value["FOSSILIZE"]
    if labels.value["WAIT"] >= max(labels.value.values()):
        assert {"WAIT", "FOSSILIZE"} <= set(labels.best) and labels.best_action is None
    assert np.isfinite(list(labels.value.values())).all()
    env.close()


def test_every_episode_gets_one_dormant_branch_point():
    from pipelines.generation.episode import GenerationSpec, run_episode

    data = load_dataset("synthetic", num_samples=300)
    spec = GenerationSpec(load_config("minimal"), dataset="synthetic", epochs=8, rng_seed=4, epsilon=0.5,
                          counterfactual_fraction=1e-9, counterfactual_epochs=1)
    for index in range(3):
        steps = run_episode(spec, index, data).steps
        found = [s["counterfactual_stratum"] for s in steps if s["counterfactual"] is not None]
        assert found == ["dormant"]  # one dormant point whatever the fraction; live strata at its chance
    spec = GenerationSpec(load_config("minimal"), dataset="synthetic", epochs=8, counterfactual_fraction=0.0)
    assert all(s["counterfactual"] is None for s in run_episode(spec, 0, data).steps)


def test_explain_ranks_the_actions_by_their_value(pack):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["explain", str(pack), "0", "--format", "json"]) == 0
    brief = json.loads(out.getvalue())
    steps = {r["step"]: r for r in open_pack(pack).steps(episodes=["ep-000000"]).to_pylist()}
    assert brief["counterfactuals"]
    for c in brief["counterfactuals"]:
        stored = {v["action"]: v["value"] for v in steps[c["step"]]["counterfactual"]}
        assert [v["action"] for v in c["values"]] == sorted(stored, key=lambda a: -stored[a])
        assert {v["action"]: v["value"] for v in c["values"]} == pytest.approx(stored)
