"""A saved policy: it drives `esper generate` by its own argmax, refuses data that lacks its features,
refuses to load when damaged or edited, and pins a resumed pack to the very weights that began it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from support.policies import mlp_logits, sha256, standardize

from pipelines.cli import main
from pipelines.policies.learned_policy import LearnedPolicy, PolicyError
from telemetry.packs.reader import open_pack

GEN = ["generate", "--dataset", "synthetic", "--epochs", "6", "--seed", "3", "--workers", "1", "--quiet"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and out == "", (code, err)
    assert err.startswith("esper: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    return err


# ---- 6. the policy drives the environment ---------------------------------------------------------

def test_generate_with_a_saved_policy_takes_its_argmax_at_every_step(driven: Path, policy_minimal: Path) -> None:
    policy = LearnedPolicy.load(policy_minimal)
    pack = open_pack(driven)
    generation = pack.manifest.provenance.model_extra["generation"]
    assert generation["policy"] == str(policy_minimal.resolve())
    assert generation["policy_sha256"] == sha256(policy_minimal / "weights.pt") == policy.weights_sha256
    assert generation["counterfactual_fraction"] == 0.0

    table = pack.steps(columns=[*policy.feature_names, "action", "action_mask", "behaviour_prob", "best_action"])
    assert table.num_rows == 4 * 5
    assert set(table.column("behaviour_prob").to_pylist()) == {1.0}  # greedy: mu(a|s) = 1
    assert table.column("best_action").null_count == table.num_rows  # never branched
    raw = np.array([[np.nan if v is None else v for v in table.column(n).to_pylist()]
                    for n in policy.feature_names], dtype=np.float64).T
    z = standardize(raw, policy.centre, policy.scale)
    mask = np.array(table.column("action_mask").to_pylist(), dtype=bool)
    recorded = np.array([policy.actions.index(a) for a in table.column("action").to_pylist()])
    assert mask[np.arange(len(recorded)), recorded].all()

    # the policy's own forward pass on the recorded features...
    predicted = policy.predict(torch.from_numpy(z.astype(np.float32)), torch.from_numpy(mask)).numpy()
    assert predicted.tolist() == recorded.tolist()
    # ...and an independent float64 recomputation of the MLP from the saved weights
    state = torch.load(policy_minimal / "weights.pt", weights_only=True)
    logits = np.where(mask, mlp_logits(state, z), -np.inf)
    chosen = logits[np.arange(len(recorded)), recorded]
    assert np.all(chosen >= logits.max(axis=1) - 1e-4), "an action other than the argmax was recorded"
    assert len(set(recorded.tolist())) >= 2, "the policy only ever did one thing: the check proves little"


def test_the_driven_pack_is_sound(driven: Path, capsys) -> None:
    assert main(["validate", str(driven)]) == 0
    assert "sound" in capsys.readouterr().out


def test_a_saved_policy_can_be_branched_for_labels(policy_minimal: Path, tmp_path: Path) -> None:
    """The rollouts continue with a scripted schedule, not with the behaviour policy, so any policy's
    episodes can carry counterfactual labels."""
    out = tmp_path / "pack"
    assert main([*GEN, "--profile", "minimal", "--episodes", "2", "--policy", str(policy_minimal),
                 "--counterfactual", "1", "--out", str(out)]) == 0
    labelled = open_pack(out).steps(columns=["counterfactual_stratum"]).column(0).drop_null().to_pylist()
    assert "dormant" in labelled


def test_resume_with_another_policy_is_refused_and_with_the_same_one_completes(
        driven: Path, policy_minimal: Path, policy_minimal_seed1: Path, tmp_path: Path,
        capsys) -> None:
    other = policy_minimal_seed1
    out = tmp_path / "pack"
    shutil.copytree(driven, out)
    before = snapshot(out)
    refused([*GEN, "--profile", "minimal", "--episodes", "5", "--policy", str(other), "--out", str(out),
             "--resume"], capsys, "the pack was generated with policy=")
    assert snapshot(out) == before
    assert main([*GEN, "--profile", "minimal", "--episodes", "5", "--policy", str(policy_minimal),
                 "--out", str(out), "--resume"]) == 0
    assert "1 generated" in capsys.readouterr().out
    assert open_pack(out).manifest.quick_stats.episodes == 5


def test_resume_after_the_policy_was_retrained_in_place_is_refused(
        policy_minimal: Path, policy_minimal_seed1: Path, tmp_path: Path, capsys) -> None:
    model, out = tmp_path / "model", tmp_path / "pack"
    shutil.copytree(policy_minimal, model)
    small = ["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--quiet",
             "--policy", str(model), "--out", str(out)]
    assert main([*small, "--episodes", "1"]) == 0
    capsys.readouterr()
    shutil.rmtree(model)
    shutil.copytree(policy_minimal_seed1, model)  # same path, other weights
    before = snapshot(out)
    refused([*small, "--episodes", "2", "--resume"], capsys, "the pack was generated with policy_sha256=")
    assert snapshot(out) == before


# ---- 5. a policy refuses data without its features --------------------------------------------------

def test_a_policy_trained_on_more_features_than_the_run_records_is_refused(
        policy_all: Path, diagnostic: Path, minimal: Path, tmp_path: Path, capsys) -> None:
    diagnostic, minimal = open_pack(diagnostic), open_pack(minimal)
    trained = json.loads((policy_all / "policy.json").read_text())["feature_names"]
    assert trained == diagnostic.feature_names("all")
    missing = len(set(trained) - set(minimal.feature_names("all")))
    assert missing > 100
    out = tmp_path / "pack"
    err = refused([*GEN, "--profile", "minimal", "--episodes", "2", "--policy", str(policy_all), "--out", str(out)],
                  capsys, f"lacks {missing} of the policy's {len(trained)} features")
    assert "--profile minimal" in err
    assert list(tmp_path.iterdir()) == []


def test_check_features_refuses_names_it_was_not_trained_with(
        policy_all: Path, policy_minimal: Path, diagnostic: Path, minimal: Path) -> None:
    diagnostic, minimal = open_pack(diagnostic), open_pack(minimal)
    wide, narrow = LearnedPolicy.load(policy_all), LearnedPolicy.load(policy_minimal)
    with pytest.raises(PolicyError, match=r"lacks \d+ of the policy's \d+ features"):
        wide.check_features(minimal.feature_names(), "the minimal pack")
    wide.check_features(diagnostic.feature_names(), "the diagnostic pack")
    narrow.check_features(minimal.feature_names(), "the minimal pack")  # a subset is all a policy needs
    narrow.check_features(diagnostic.feature_names(), "the diagnostic pack")
    with pytest.raises(PolicyError, match="'val_loss'"):
        narrow.check_features([n for n in minimal.feature_names() if n != "val_loss"], "one feature short")


# ---- 5c. damaged or edited policies are refused on load -----------------------------------------------

def _edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        document = json.loads((model / "policy.json").read_text())
        change(document)
        (model / "policy.json").write_text(json.dumps(document))
    return apply


def _flip_byte(model: Path) -> None:
    data = bytearray((model / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / "weights.pt").write_bytes(bytes(data))


def _truncate(model: Path) -> None:
    data = (model / "weights.pt").read_bytes()
    (model / "weights.pt").write_bytes(data[: len(data) // 2])


def _foreign_weights(model: Path) -> None:
    """Another network's weights, with the checksum updated to match: only the shape check can tell."""
    foreign = torch.nn.Linear(3, 2).state_dict()
    torch.save(foreign, model / "weights.pt")
    _edit(lambda d: d.update(weights_sha256=sha256(model / "weights.pt")))(model)


DAMAGE = [
    ("flipped-weights-byte", _flip_byte, "checksum differs from policy.json's weights_sha256"),
    ("truncated-weights", _truncate, "checksum differs"),
    ("weights-missing", lambda m: (m / "weights.pt").unlink(), "weights.pt is missing"),
    ("foreign-weights", _foreign_weights, "not the weights of a"),
    ("format", _edit(lambda d: d.update(format="esper-policy/0")), "format is 'esper-policy/0'"),
    ("not-json", lambda m: (m / "policy.json").write_text('{"format": '), "policy.json: not valid JSON"),
    ("centre-short", _edit(lambda d: d["centre"].pop()), "disagree in length"),
    ("extra-feature-name", _edit(lambda d: d["feature_names"].append("bogus")), "disagree in length"),
    ("scale-zero", _edit(lambda d: d["scale"].__setitem__(0, 0.0)), "'scale' must hold finite numbers > 0"),
    ("centre-null", _edit(lambda d: d["centre"].__setitem__(3, None)), "'centre' must hold finite numbers"),
    ("duplicate-feature", _edit(lambda d: d["feature_names"].__setitem__(1, d["feature_names"][0])),
     "'feature_names' must be distinct names"),
    ("network-extra-key", _edit(lambda d: d["network"].update(dropout=0.5)), "'network' must give"),
    ("network-hidden-text", _edit(lambda d: d["network"].update(hidden="wide")), "'network' must give"),
    ("actions-dropped", _edit(lambda d: d["actions"].pop()), "the network has 8 outputs for 7 actions"),
]


@pytest.mark.parametrize("damage, needle", [pytest.param(d, n, id=i) for i, d, n in DAMAGE])
def test_a_damaged_or_edited_policy_is_refused_with_one_line(damage, needle: str, policy_minimal: Path,
                                                             tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(policy_minimal, model)
    damage(model)
    with pytest.raises(PolicyError) as caught:
        LearnedPolicy.load(model)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    out = tmp_path / "pack"
    refused([*GEN, "--profile", "minimal", "--episodes", "1", "--policy", str(model), "--out", str(out)],
            capsys, needle)
    assert not out.exists()


def test_a_directory_without_policy_json_is_not_a_policy(tmp_path: Path, capsys) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(PolicyError, match="not a saved policy"):
        LearnedPolicy.load(tmp_path / "model")
    refused([*GEN, "--episodes", "1", "--policy", str(tmp_path / "model"), "--out", str(tmp_path / "pack")],
            capsys, "expected heuristic, never, or a policy directory written by `esper train`")
    assert not (tmp_path / "pack").exists()


def test_a_saved_policy_round_trips(policy_minimal: Path, tmp_path: Path) -> None:
    """Load then save elsewhere: same weights, names, normalisation; save refuses a non-empty target."""
    policy = LearnedPolicy.load(policy_minimal)
    copy = policy.save(tmp_path / "copy")
    again = LearnedPolicy.load(copy)
    assert again.feature_names == policy.feature_names and again.actions == policy.actions
    assert np.array_equal(again.centre, policy.centre) and np.array_equal(again.scale, policy.scale)
    a, b = policy.net.state_dict(), again.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(PolicyError, match="exists and is not empty"):
        policy.save(copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no staging folder left behind
