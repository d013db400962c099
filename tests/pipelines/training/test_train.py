"""`esper train`: metrics that agree with scikit-learn, profile slicing of a larger pack, episode-level
splits, a saved policy that records exactly what it was trained on and reproduces its own scores, and
bad input refused with one line."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score
from support.packs import assert_bit_equal, make_episodes, sort, write_pack
from support.policies import FAST, raw_steps, sha256, standardize

from pipelines.cli import main
from pipelines.policies.learned_policy import LearnedPolicy
from pipelines.training.metrics import classification_report
from pipelines.training.train import TrainOptions, train_policy
from telemetry.packs.reader import open_pack
from telemetry.packs.splits import split_of

ACTIONS = ["WAIT", "GERMINATE_CONV", "GERMINATE_ATTENTION", "GERMINATE_NORM", "GERMINATE_DEPTHWISE",
           "ADVANCE", "FOSSILIZE", "CULL"]
SPLITS = ("train", "val", "test")


# ---- 1. metrics ----------------------------------------------------------------------------------

def test_metrics_agree_with_scikit_learn_including_actions_absent_from_the_labels() -> None:
    rng = np.random.default_rng(0)
    absent_seen = 0
    for trial in range(120):
        n = int(rng.integers(1, 60))
        present = rng.choice(8, size=int(rng.integers(1, 9)), replace=False)  # some actions never occur
        truth = rng.choice(present, size=n)
        # mostly right, often wrong, and sometimes predicting actions the labels never contain
        predicted = np.where(rng.random(n) < 0.5, truth, rng.integers(0, 8, size=n))
        report = classification_report(truth, predicted, ACTIONS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
            expected_balanced = balanced_accuracy_score(truth, predicted)
            expected_recall = recall_score(truth, predicted, labels=list(range(8)), average=None,
                                           zero_division=np.nan)
        assert report.rows == n
        assert report.accuracy == pytest.approx(float(np.mean(truth == predicted)), abs=1e-12)
        assert report.balanced_accuracy == pytest.approx(expected_balanced, abs=1e-12), trial
        for i, name in enumerate(ACTIONS):
            if math.isnan(expected_recall[i]):
                assert report.recall[name] is None, (trial, name)
                absent_seen += 1
            else:
                assert report.recall[name] == pytest.approx(expected_recall[i], abs=1e-12), (trial, name)
        assert report.confusion == confusion_matrix(truth, predicted, labels=list(range(8))).tolist()
    assert absent_seen > 40  # the case that matters (WAIT-dominated data lacks rare actions) was exercised


def test_metrics_of_no_rows_are_undefined_not_zero() -> None:
    report = classification_report(np.array([], dtype=int), np.array([], dtype=int), ACTIONS)
    assert report.rows == 0 and report.accuracy is None and report.balanced_accuracy is None
    assert all(v is None for v in report.recall.values())
    assert report.confusion == [[0] * 8 for _ in range(8)]


# ---- 2. a profile slices a larger pack exactly ---------------------------------------------------

# Annotation text derived from whatever features the profile records (a red flag needs its feature):
# it legitimately differs between profiles, so only these columns are left out of the comparison.
PROFILE_DEPENDENT_TEXT = {"narrative", "red_flags", "opportunities"}


def test_a_profile_of_a_diagnostic_pack_is_bit_identical_to_a_pack_recorded_with_that_profile(
        diagnostic: Path, minimal: Path) -> None:
    big, small = open_pack(diagnostic), open_pack(minimal)
    manifest_minimal = json.loads((diagnostic / "manifest.json").read_text())["profiles"]["minimal"]
    assert big.feature_names("minimal") == manifest_minimal == small.feature_names("all")
    assert len(manifest_minimal) < len(big.feature_names("all"))
    episodes = small.episodes(columns=["episode_id"]).column(0).to_pylist()
    assert len(episodes) == 6
    rows = 0
    for episode in episodes:  # per episode: the two packs were written in different completion orders
        sliced, recorded = big.tensors("minimal", episodes=episode), small.tensors("all", episodes=episode)
        assert sliced.names == recorded.names == manifest_minimal
        assert sliced.features.shape == recorded.features.shape and sliced.features.shape[0] == 5
        # bit for bit, NaN payloads included
        assert torch.equal(sliced.features.view(torch.int32), recorded.features.view(torch.int32)), episode
        assert torch.equal(sliced.actions, recorded.actions) and torch.equal(sliced.action_mask, recorded.action_mask)
        oracle = big.tensors("minimal", episodes=episode, labels="best_action")
        assert torch.equal(oracle.actions, small.tensors("all", episodes=episode, labels="best_action").actions)
        rows += recorded.features.shape[0]
    assert rows == small.manifest.quick_stats.steps
    # The raw steps table: every column the minimal pack has, from the diagnostic pack's files
    columns = [c for c in small.schema("steps").names if c not in PROFILE_DEPENDENT_TEXT]
    from_big = sort(big.steps(columns=columns, episodes=episodes))
    from_small = sort(small.steps(columns=columns))
    assert from_small.num_rows == rows and set(manifest_minimal) <= set(columns)
    assert_bit_equal(from_big, from_small)


# ---- 3. splits are by episode --------------------------------------------------------------------

def test_training_rows_come_from_disjoint_episode_splits_covering_the_pack(diagnostic: Path) -> None:
    pack = open_pack(diagnostic)
    calls: list[tuple[object, object, int]] = []
    read = pack.tensors

    def spy(*args, **kwargs):
        out = read(*args, **kwargs)
        calls.append((kwargs.get("split"), kwargs.get("episodes"), out.features.shape[0]))
        return out

    pack.tensors = spy  # type: ignore[method-assign]
    result = train_policy(pack, "minimal", "heuristic", rng_seed=0, options=TrainOptions(max_epochs=2))
    assert sorted(str(c[0]) for c in calls) == sorted(SPLITS) and all(c[1] is None for c in calls)
    used = {c[0]: c[2] for c in calls}

    ids = {s: pack.steps(split=s, columns=["episode_id"]).column(0).to_pylist() for s in SPLITS}
    for split in SPLITS:
        assert len(ids[split]) == used[split] == result.policy.meta["training"]["rows"][split] > 0
        assert {split_of(e, pack.manifest.splits) for e in ids[split]} == {split}
    sets = {s: set(v) for s, v in ids.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    every = set(pack.episodes(columns=["episode_id"]).column(0).to_pylist())
    assert sets["train"] | sets["val"] | sets["test"] == every and len(every) == 17

    con = raw_steps(diagnostic)
    assert con.execute("SELECT episode_id FROM steps GROUP BY 1 HAVING count(DISTINCT split) <> 1").fetchall() == []
    per_split = dict(con.execute("SELECT split, count(DISTINCT episode_id) FROM steps GROUP BY 1").fetchall())
    assert per_split == {s: len(sets[s]) for s in SPLITS}


# ---- 4. esper train end to end -------------------------------------------------------------------

def _train(pack: Path, out: Path, seed: int = 0, target: str = "oracle", features: str = "minimal") -> None:
    assert main(["train", str(pack), "--features", features, "--target", target, "--seed", str(seed),
                 "--out", str(out), *FAST]) == 0


def test_train_saves_exactly_its_features_normalisation_and_provenance(diagnostic: Path, tmp_path: Path,
                                                                       capsys) -> None:
    out = tmp_path / "model"
    _train(diagnostic, out)
    printed = capsys.readouterr().out
    assert "balanced accuracy" in printed and "val:" in printed and "test:" in printed
    assert sorted(p.name for p in out.iterdir()) == ["policy.json", "weights.pt"]
    document = json.loads((out / "policy.json").read_text())
    manifest = json.loads((diagnostic / "manifest.json").read_text())
    names = manifest["profiles"]["minimal"]
    assert document["feature_names"] == names and len(names) == 27 + 14  # base block + lifecycle group
    assert all(manifest["feature_schema"]["features"][manifest["feature_schema"]["_index"][n]]["group"] in
               ("base", "lifecycle", "history", "seed") for n in names)

    # centre/scale: the train split's population mean/std over finite values, recomputed in DuckDB
    con = raw_steps(diagnostic)
    for i, name in enumerate(names):
        x = f'CAST("{name}" AS DOUBLE)'
        mean, std = con.execute(f"SELECT avg({x}) FILTER (WHERE isfinite({x})), "
                                f"stddev_pop({x}) FILTER (WHERE isfinite({x})) FROM steps WHERE split = 'train'"
                                ).fetchone()
        want_centre = 0.0 if mean is None else mean
        want_scale = 1.0 if std is None or std <= 1e-12 * max(1.0, abs(mean or 0.0)) else std
        assert document["centre"][i] == pytest.approx(want_centre, rel=1e-5, abs=1e-6), name
        assert document["scale"][i] == pytest.approx(want_scale, rel=1e-5, abs=1e-6), name

    provenance, training = document["provenance"], document["training"]
    assert provenance["pack_manifest_sha256"] == sha256(diagnostic / "manifest.json")
    assert provenance["pack_profile"] == "diagnostic" and provenance["pack_commit"] == manifest["commit"]
    assert document["target"] == "oracle" and document["features"] == "minimal" and training["seed"] == 0
    assert document["weights_sha256"] == sha256(out / "weights.pt")

    # evaluation: the confusion matrices count exactly the labelled (branched) steps of each split
    for split in ("val", "test"):
        labelled = dict(con.execute(f"SELECT best_action, count(*) FROM steps WHERE split = '{split}' AND "
                                    "best_action IS NOT NULL GROUP BY 1").fetchall())
        report = document["evaluation"][split]
        confusion = np.array(report["confusion"])
        assert confusion.shape == (8, 8)
        assert confusion.sum() == report["rows"] == training["rows"][split] == sum(labelled.values()) > 0
        assert {ACTIONS[i]: int(n) for i, n in enumerate(confusion.sum(axis=1)) if n} == labelled
    train_rows = con.execute("SELECT count(*) FROM steps WHERE split = 'train' AND best_action IS NOT NULL").fetchone()
    assert training["rows"]["train"] == train_rows[0]


def test_the_reported_scores_are_reproduced_by_the_saved_policy(diagnostic: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    _train(diagnostic, out, target="heuristic")
    policy = LearnedPolicy.load(out)
    document = json.loads((out / "policy.json").read_text())
    pack = open_pack(diagnostic)
    for split in ("val", "test"):
        table = pack.steps(split=split, columns=[*policy.feature_names, "action", "action_mask"])
        raw = np.array([[np.nan if v is None else v for v in table.column(n).to_pylist()]
                        for n in policy.feature_names], dtype=np.float64).T
        z = standardize(raw, policy.centre, policy.scale)
        mask = torch.tensor(table.column("action_mask").to_pylist())
        predicted = policy.predict(torch.from_numpy(z.astype(np.float32)), mask).numpy()
        truth = np.array([ACTIONS.index(a) for a in table.column("action").to_pylist()])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = balanced_accuracy_score(truth, predicted)
        report = document["evaluation"][split]
        assert report["rows"] == len(truth)
        assert report["balanced_accuracy"] == pytest.approx(expected, abs=1e-12), split
        assert report["confusion"] == confusion_matrix(truth, predicted, labels=list(range(8))).tolist()


def test_the_same_seed_gives_the_same_weights(diagnostic: Path, tmp_path: Path) -> None:
    _train(diagnostic, tmp_path / "a", seed=5)
    _train(diagnostic, tmp_path / "b", seed=5)
    _train(diagnostic, tmp_path / "c", seed=6)
    a, b, c = (torch.load(tmp_path / n / "weights.pt", weights_only=True) for n in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    docs = [json.loads((tmp_path / n / "policy.json").read_text()) for n in "abc"]
    assert docs[0]["weights_sha256"] == docs[1]["weights_sha256"] != docs[2]["weights_sha256"]
    assert docs[0]["evaluation"] == docs[1]["evaluation"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed is really used


def test_explicit_feature_names_keep_the_order_given(diagnostic: Path) -> None:
    pack = open_pack(diagnostic)
    result = train_policy(pack, ["val_loss", "epoch", "seed"], "heuristic", options=TrainOptions(max_epochs=1))
    seed_group = pack.manifest.feature_schema.groups["seed"]
    assert result.policy.feature_names == ["val_loss", "epoch", *seed_group]


# ---- 7. bad input --------------------------------------------------------------------------------

def _refused(argv: list[str], capsys, needle: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("esper: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    return err


def test_labels_that_their_mask_forbids_are_refused(tmp_path: Path, capsys) -> None:
    """Random masks and actions (ids 9/27 land in val, 20/29 in test): some labels are masked out."""
    pack = tmp_path / "pack"
    write_pack(pack, make_episodes(0, 30, steps=4, profile="minimal"), profile="minimal")
    _refused(["train", str(pack), "--features", "all", "--target", "heuristic", "--out", str(tmp_path / "m")],
             capsys, "with an action their action_mask marks invalid")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("pack_name, change, needle", [
    ("diagnostic", {"--target": "imitation"}, "invalid choice: 'imitation'"),
    ("diagnostic", {"--features": "base,bogus"}, "'bogus' is not a profile"),
    ("minimal", {"--features": "loss_landscape"}, "'loss_landscape' is not a profile"),  # a group it lacks
    ("diagnostic", {"--lr": "inf"}, "--lr must be a finite number > 0, got inf"),
    ("diagnostic", {"--lr": "3.402823466385288e+37"}, "--lr must be at most 1e+06, got 3.402823466385288e+37"),
    ("diagnostic", {"--weight-decay": "1e30"}, "training diverged"),
    ("diagnostic", {"--patience": "0"}, "--patience must be a finite number > 0, got 0"),
])
def test_bad_train_settings_are_one_line_and_write_nothing(pack_name: str, change: dict[str, str], needle: str,
                                                            tmp_path: Path, request, capsys) -> None:
    out = tmp_path / "model"
    settings = {"--features": "all", "--target": "heuristic", "--out": str(out), "--max-epochs": "3", **change}
    pack = request.getfixturevalue(pack_name)
    _refused(["train", str(pack), *(x for item in settings.items() for x in item)], capsys, needle)
    assert list(tmp_path.iterdir()) == []


def test_no_weight_decay_is_a_valid_setting(diagnostic: Path, tmp_path: Path) -> None:
    """--weight-decay 0 (plain Adam steps) trains and is recorded; a negative one is refused."""
    out = tmp_path / "model"
    assert main(["train", str(diagnostic), "--features", "minimal", "--target", "heuristic", "--max-epochs", "2",
                 "--weight-decay", "0", "--out", str(out)]) == 0
    assert json.loads((out / "policy.json").read_text())["training"]["weight_decay"] == 0.0
    with pytest.raises(Exception, match="--weight-decay must be a finite number >= 0, got -0.1"):
        TrainOptions(weight_decay=-0.1).check()


def test_an_existing_out_is_never_overwritten(diagnostic: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    _refused(["train", str(diagnostic), "--features", "minimal", "--target", "oracle", "--out", str(out)],
             capsys, "exists and is not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_pack_missing_a_split_is_refused(tmp_path: Path, capsys) -> None:
    pack = tmp_path / "pack"
    write_pack(pack, make_episodes(0, 3, steps=3, profile="minimal"), profile="minimal")  # all in train
    _refused(["train", str(pack), "--features", "all", "--target", "heuristic", "--out", str(tmp_path / "m")],
             capsys, "the val split holds no episodes")
    assert not (tmp_path / "m").exists()


def test_a_split_without_oracle_labels_is_refused(tmp_path: Path, capsys) -> None:
    """Every action valid (no mask), but the val episodes were never branched: no oracle labels there."""
    episodes = make_episodes(0, 30, steps=4, profile="minimal")
    for episode, steps in episodes:
        for step in steps:
            step["action_mask"] = None
            if split_of(episode["episode_id"]) == "val":
                step.update(best_action=None, counterfactual=None)
    pack = tmp_path / "pack"
    write_pack(pack, episodes, profile="minimal")
    _refused(["train", str(pack), "--features", "all", "--target", "oracle", "--out", str(tmp_path / "m")],
             capsys, "the val split has no labelled steps for --target oracle")
    assert not (tmp_path / "m").exists()
    # the same pack trains fine on the heuristic's labels, which every step has
    assert main(["train", str(pack), "--features", "all", "--target", "heuristic", "--out", str(tmp_path / "m"),
                 "--max-epochs", "2"]) == 0
