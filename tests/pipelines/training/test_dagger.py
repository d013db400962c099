"""`esper train --target expert --dagger ROUNDS`: the roll-in is driven by the previous learner and
labelled by the expert, the final policy trains on the pack plus every roll-in (counted here from
the Parquet files by DuckDB), round seeds never repeat the pack's, an interrupted run resumes, and
bad settings are one line."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.policies import mlp_logits, raw_steps, sha256, standardize

from pipelines.cli import main
from pipelines.generation.generate import GenerationError
from pipelines.generation.roll_in import roll_in
from pipelines.training.dagger import round_seeds
from telemetry.packs import read_manifest
from telemetry.packs.reader import open_pack

SETTINGS = ["--features", "minimal", "--target", "expert", "--dagger", "1", "--dagger-episodes", "3", "--hidden", "8",
            "--max-epochs", "8", "--patience", "4"]


@pytest.fixture(scope="module")
def dagger(expert_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("dagger") / "model"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", str(expert_pack), *SETTINGS, "--out", str(out)]) == 0
    return out, printed.getvalue()


def _split_counts(pack: Path) -> dict[str, int]:
    return dict(raw_steps(pack).execute("SELECT split, count(*) FROM steps GROUP BY split").fetchall())


def test_the_roll_in_is_driven_by_the_round_0_learner_and_labelled_by_the_expert(dagger) -> None:
    out, _ = dagger
    learner, rolled = out / "dagger" / "learner-0", out / "dagger" / "round-1"
    document = json.loads((learner / "policy.json").read_text())
    generation = read_manifest(rolled).provenance.model_extra["generation"]
    assert generation["policy_sha256"] == sha256(learner / "weights.pt") == document["weights_sha256"]
    assert Path(generation["policy"]) == learner.resolve()
    assert generation["epsilon"] == 0.0 and generation["counterfactual_fraction"] == 0.0
    names = document["feature_names"]
    rows = raw_steps(rolled).execute(f"SELECT {', '.join(names)}, action_mask, action, expert_action "
                                     "FROM steps").fetchall()
    raw = np.array([[np.nan if v is None else v for v in row[:len(names)]] for row in rows], dtype=np.float64)
    z = standardize(raw, np.array(document["centre"]), np.array(document["scale"]))
    state = torch.load(learner / "weights.pt", weights_only=True)
    logits = np.where(np.array([row[-3] for row in rows]), mlp_logits(state, z), -np.inf)
    chosen = [document["actions"][i] for i in logits.argmax(axis=1)]
    assert len(rows) == 3 * 5 and chosen == [row[-2] for row in rows]
    assert all(row[-1] in document["actions"] for row in rows)  # every roll-in step has the expert's label


def test_the_final_policy_trains_on_the_pack_and_every_roll_in(dagger, expert_pack: Path) -> None:
    out, printed = dagger
    document = json.loads((out / "policy.json").read_text())
    rolled = out / "dagger" / "round-1"
    pack, extra = _split_counts(expert_pack), _split_counts(rolled)
    assert document["training"]["rows"] == {s: pack.get(s, 0) + extra.get(s, 0) for s in ("train", "val", "test")}
    assert extra  # the roll-in added rows
    # standardised with the original pack's train statistics, whatever the roll-ins hold
    train = open_pack(expert_pack).manifest.split_stats["train"].columns
    assert document["centre"] == pytest.approx([train[n].mean for n in document["feature_names"]], rel=1e-6)
    [record] = document["dagger"]["rounds_detail"]
    assert record["path"] == str(rolled.resolve()) and record["manifest_sha256"] == sha256(rolled / "manifest.json")
    agreed, steps = raw_steps(rolled).execute("SELECT sum(CAST(action = expert_action AS INT)), count(*) "
                                              "FROM steps").fetchone()
    assert record["expert_agreement"] == pytest.approx(agreed / steps)
    final = open_pack(rolled).episodes(columns=["final_accuracy"]).column("final_accuracy").to_numpy()
    assert record["mean_final_accuracy"] == pytest.approx(float(np.mean(final)))
    assert f"round 1: learner 0 agreed with the expert on {agreed / steps:.1%}" in printed


def test_round_seeds_never_repeat_the_packs_or_each_other(dagger) -> None:
    out, _ = dagger
    document = json.loads((out / "policy.json").read_text())
    [record] = document["dagger"]["rounds_detail"]
    pack_seed = document["dagger"]["pack_seed"]
    assert record["rng_seed"] != pack_seed
    assert read_manifest(Path(record["path"])).provenance.model_extra["generation"]["rng_seed"] == record["rng_seed"]
    for seed in (0, pack_seed, 2**62):
        seeds = round_seeds(seed, 50)
        assert len(set(seeds)) == 50 and seed not in seeds and all(0 <= s < 2**63 for s in seeds)
        assert seeds[:3] == round_seeds(seed, 3)  # more rounds keep the earlier rounds' seeds


def test_an_interrupted_run_resumes_with_its_roll_ins(expert_pack: Path, tmp_path: Path) -> None:
    """Killed after the roll-in, before the final policy was saved: the rerun reuses the learner and
    the complete roll-in pack, and saves the policy an uninterrupted run saved."""
    out = tmp_path / "model"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(expert_pack), *SETTINGS, "--out", str(out)]) == 0
    weights = sha256(out / "weights.pt")
    rolled = out / "dagger" / "round-1"
    before = sha256(rolled / "manifest.json"), sha256(out / "dagger" / "learner-0" / "weights.pt")
    for name in ("policy.json", "weights.pt"):
        (out / name).unlink()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(expert_pack), *SETTINGS, "--out", str(out)]) == 0
    assert (sha256(rolled / "manifest.json"), sha256(out / "dagger" / "learner-0" / "weights.pt")) == before
    assert sha256(out / "weights.pt") == weights
    learner = out / "dagger" / "learner-0"
    with pytest.raises(GenerationError, match="not this round's learner"):  # other weights drove that roll-in
        roll_in(open_pack(expert_pack), learner, "0" * 64, 1, 3, rolled)


@pytest.mark.parametrize("change, needle", [
    (["--target", "heuristic"], "--dagger needs --target expert"),
    (["--dagger", "0"], "--dagger must be >= 1, got 0"),
    (["--dagger-episodes", "0"], "--dagger-episodes must be >= 1, got 0"),
    (["--dagger-episodes", "-2"], "--dagger-episodes must be >= 1, got -2"),
])
def test_bad_dagger_settings_are_one_line_and_write_nothing(change: list[str], needle: str, expert_pack: Path,
                                                             tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["train", str(expert_pack), *SETTINGS, *change, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []
