"""`esper train --target advantage`: the regression targets are the stored rollouts' Q(s,a) - Q(s,WAIT)
(recomputed from the Parquet files in DuckDB, float64), steps without a branch contribute nothing,
training lowers the loss, and the saved policy, in `esper generate` too, takes the valid action of
highest advantage, WAIT's being 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from support.packs import make_episodes, write_pack
from support.policies import mlp_logits, raw_steps, standardize

from pipelines.cli import main
from pipelines.policies.learned_policy import LearnedPolicy
from pipelines.policies.networks import build_network
from pipelines.training.advantage import advantage_targets, regret
from pipelines.training.train import SPLITS, Loss, TrainOptions, class_weights, load_split, train_policy
from telemetry import EsperError
from telemetry.packs import Pack, open_pack, split_of

ACTIONS = ["WAIT", "GERMINATE_CONV", "GERMINATE_ATTENTION", "GERMINATE_NORM", "GERMINATE_DEPTHWISE", "ADVANCE",
           "FOSSILIZE", "CULL"]


def _reference(pack: Path, split: str) -> dict[tuple[str, int], dict[str, float]]:
    """(episode, step) -> {action: Q(s,a) - Q(s,WAIT)} for every branched step, from the raw files."""
    rows = raw_steps(pack).execute(f"""
        WITH values AS (SELECT episode_id, step, unnest(counterfactual) AS c FROM steps WHERE split = '{split}')
        SELECT v.episode_id, v.step, v.c.action,
               CAST(v.c.value AS DOUBLE) - CAST(w.c.value AS DOUBLE)
        FROM values v JOIN values w ON v.episode_id = w.episode_id AND v.step = w.step AND w.c.action = 'WAIT'
        """).fetchall()
    out: dict[tuple[str, int], dict[str, float]] = {}
    for episode, step, action, advantage in rows:
        out.setdefault((episode, step), {})[action] = advantage
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_targets_are_the_stored_values_minus_waits_and_unbranched_steps_add_nothing(diagnostic: Path,
                                                                                   split: str) -> None:
    pack = open_pack(diagnostic)
    table = pack.steps(split=split, columns=["episode_id", "step", "counterfactual"])
    values, has = advantage_targets(table.column("counterfactual"), ACTIONS)
    expected = _reference(diagnostic, split)
    keys = list(zip(table.column("episode_id").to_pylist(), table.column("step").to_pylist(), strict=True))
    branched = [k in expected for k in keys]
    assert 0 < sum(branched) < len(keys)  # both kinds of row are exercised
    for i, key in enumerate(keys):
        want = expected.get(key, {})
        assert {ACTIONS[a] for a in np.flatnonzero(has[i])} == set(want), key
        for action, advantage in want.items():
            assert values[i, ACTIONS.index(action)] == advantage, (key, action)  # exact, float64
        assert (values[i][~has[i]] == 0).all()
    assert any(v != 0 for row in expected.values() for v in row.values())  # not all WAIT's own zero

    # the training data: exactly the branched rows, each with its stored advantages
    data = load_split(pack, pack.feature_names("minimal"), split, "advantage")
    assert data.rows == len(data.features) == sum(branched) == len(expected)
    assert data.advantages is not None and data.has is not None
    assert torch.equal(data.has, torch.from_numpy(has[branched]))
    assert torch.equal(data.advantages, torch.from_numpy(values[branched]))


def test_a_step_without_a_value_for_wait_contributes_nothing() -> None:
    point = pa.struct([("action", pa.string()), ("value", pa.float32()), ("accuracy", pa.float32()),
                       ("cost", pa.float32())])
    column = pa.array([
        [{"action": "WAIT", "value": 1.5, "accuracy": 1.5, "cost": 0.0},
         {"action": "CULL", "value": 2.25, "accuracy": 2.5, "cost": 0.25}],
        None,
        [{"action": "CULL", "value": 9.0, "accuracy": 9.0, "cost": 0.0}],
    ], pa.list_(point))
    values, has = advantage_targets(column, ACTIONS)
    assert has.tolist()[0] == [True] + [False] * 6 + [True]
    assert values[0, 7] == 0.75 and values[0, 0] == 0.0
    assert not has[1:].any() and not values[1:].any()
    with pytest.raises(EsperError, match="outside the pack's actions"):
        advantage_targets(pa.array([[{"action": "JUMP", "value": 1.0, "accuracy": 1.0, "cost": 0.0}]],
                                   pa.list_(point)), ACTIONS)
    # regret: value lost against the best stored action, over steps where the choice has a value
    assert regret(np.array([0, 7, 0]), values, has) == 0.75


def test_training_lowers_the_loss_and_the_policy_takes_the_argmax_of_its_advantages(diagnostic: Path) -> None:
    pack = open_pack(diagnostic)
    names = pack.feature_names("minimal")
    train = load_split(pack, names, "train", "advantage")
    loss = Loss(class_weights(train.labels[train.labelled], len(ACTIONS)), wait=0)
    options = TrainOptions(max_epochs=40, patience=40, hidden=32)
    with torch.random.fork_rng():  # the network train_policy starts from, with the same seed
        torch.manual_seed(3)
        initial = build_network("mlp", len(names), len(ACTIONS), options.hidden, options.layers)
    result = train_policy(pack, "minimal", "advantage", rng_seed=3, options=options)
    before, after = loss.validation(initial, train), loss.validation(result.policy.net, train)
    assert after < 0.5 * before, (before, after)

    # the policy's choice at every branched state: the argmax of its advantages over the valid actions
    policy = result.policy
    assert policy.meta["target"] == "advantage" and policy.wait_index == 0
    table = pack.steps(split="train", columns=[*names, "action_mask", "counterfactual"])
    z = standardize(_raw(table, names), policy.centre, policy.scale)
    mask = np.array(table.column("action_mask").to_pylist(), dtype=bool)
    state = {k: v.detach() for k, v in policy.net.state_dict().items()}
    advantages = mlp_logits(state, z)
    advantages[:, 0] = 0.0  # WAIT's advantage over itself
    expected = np.where(mask, advantages, -np.inf).argmax(axis=1)
    assert policy.choose(table, "train") == expected.tolist()
    assert len(set(expected.tolist())) >= 2, "the policy only ever did one thing: the check proves little"


def test_esper_generate_drives_episodes_by_the_saved_advantages(policy_advantage: Path,
                                                               driven_advantage: Path) -> None:
    document = json.loads((policy_advantage / "policy.json").read_text())
    assert document["target"] == "advantage" and "regret" in document["evaluation"]["test"]
    policy = LearnedPolicy.load(policy_advantage)
    table = open_pack(driven_advantage).steps(columns=[*policy.feature_names, "action", "action_mask"])
    z = standardize(_raw(table, policy.feature_names), policy.centre, policy.scale)
    mask = np.array(table.column("action_mask").to_pylist(), dtype=bool)
    advantages = mlp_logits(torch.load(policy_advantage / "weights.pt", weights_only=True), z)
    advantages[:, 0] = 0.0
    recorded = np.array([ACTIONS.index(a) for a in table.column("action").to_pylist()])
    scores = np.where(mask, advantages, -np.inf)
    assert np.all(scores[np.arange(len(recorded)), recorded] >= scores.max(axis=1) - 1e-5)


def _raw(table: pa.Table, names: list[str]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in table.column(n).to_pylist()] for n in names],
                    dtype=np.float64).T


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["network"].update(model="transformer"), "'network' has model 'transformer'; expected one of"),
    (lambda d: d.update(target="value"), "'target' is 'value'; expected one of"),
])
def test_a_policy_file_with_an_unknown_model_or_target_is_refused(policy_advantage: Path, tmp_path: Path,
                                                                  edit, needle: str, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.pt").write_bytes((policy_advantage / "weights.pt").read_bytes())
    document = json.loads((policy_advantage / "policy.json").read_text())
    edit(document)
    (model / "policy.json").write_text(json.dumps(document))
    out = tmp_path / "pack"
    code = main(["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--episodes", "1",
                 "--quiet", "--policy", str(model), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("esper: error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_an_unknown_model_is_refused_on_the_command_line(diagnostic: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model"
    code = main(["train", str(diagnostic), "--features", "minimal", "--target", "advantage", "--model", "lstm",
                 "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "invalid choice: 'lstm'" in err, err
    assert not out.exists()
    with pytest.raises(EsperError, match="--model 'lstm'; expected one of: mlp, gru"):
        TrainOptions(model="lstm").check()


@pytest.mark.parametrize("model", ["mlp", "gru"])
def test_steps_whose_best_actions_tie_train_with_equal_targets(tmp_path: Path, model: str) -> None:
    """Every branched step a tie of WAIT and FOSSILIZE above CULL: no oracle label anywhere, yet every
    branched step is an advantage target, the tied actions' targets equal (0)."""
    episodes = make_episodes(0, 30, steps=4, profile="minimal")
    for _, steps in episodes:
        for step in steps:
            step["action_mask"] = [a in ("WAIT", "FOSSILIZE", "CULL") for a in ACTIONS]
            if step["counterfactual"] is not None:
                step["counterfactual"] = [{"action": a, "value": v, "accuracy": v, "cost": 0.0}
                                          for a, v in (("WAIT", 61.5), ("FOSSILIZE", 61.5), ("CULL", 60.25))]
                step.update(best_action=None, best_actions=["WAIT", "FOSSILIZE"])
    write_pack(tmp_path / "pack", episodes, profile="minimal")
    pack = open_pack(tmp_path / "pack")
    data = load_split(pack, pack.feature_names("all"), "train", "advantage", model)
    assert data.advantages is not None and data.has is not None
    at = data.labelled
    assert int(at.sum()) == sum(1 for episode, steps in episodes if _split(episode["episode_id"], pack) == "train"
                                for s in steps if s["counterfactual"] is not None) > 0
    assert (data.advantages[at][:, ACTIONS.index("FOSSILIZE")] == 0).all()
    assert (data.advantages[at][:, ACTIONS.index("CULL")] == -1.25).all()
    result = train_policy(pack, "all", "advantage", options=TrainOptions(model=model, hidden=8, max_epochs=2))
    assert result.policy.meta["evaluation"]["test"]["rows"] == 0  # no unique best: nothing to classify
    assert 0.0 <= result.policy.meta["evaluation"]["test"]["regret"] <= 1.25  # per step: a tie (0) or CULL


def _split(episode: str, pack: Pack) -> str:
    return split_of(episode, pack.manifest.splits)
