"""The expert's labels against the cause: `expert_action` on every step is what a privileged expert
that knows the episode's scenario would do in the state the step's features describe, whatever the
behaviour policy did. Read back from the pack and recomputed here from the rule as documented
(policies/experts.py): cull a live seed that is not the remedy, plant the remedy from epoch 1 once
the slot is free, then finish the live seed on schedule; wait without a remedy."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from support.packs import make_episodes, write_pack_without

from pipelines.cli import main
from pipelines.environment.scenarios import REMEDIES
from telemetry.packs.reader import open_pack

BLUEPRINTS = ("conv", "attention", "norm", "depthwise")
LIVE = {1, 2, 3}  # seed_stage: GERMINATED, TRAINING, BLENDING (SeedStage's integers)
GERMINATED, TRAINING, TRAIN_EPOCHS, GERMINATE_FROM = 1, 2, 3, 1


def _rows(pack: Path) -> list[dict]:
    """Every step with its episode's cause and the features the rule reads."""
    opened = open_pack(pack)
    cause = dict(zip(*(opened.episodes(columns=["episode_id", "scenario"]).column(c).to_pylist()
                       for c in ("episode_id", "scenario")), strict=True))
    columns = ["episode_id", "step", "epoch", "seed_stage", "seed_epochs_in_stage", "action", "expert_action",
               "action_mask", *(f"live_blueprint_{b}" for b in BLUEPRINTS)]
    rows = opened.steps(columns=columns).to_pylist()
    for row in rows:
        row["cause"] = cause[row["episode_id"]]
        row["live"] = next((b for b in BLUEPRINTS if row[f"live_blueprint_{b}"]), None)
    return rows


def _expected(row: dict, actions: list[str]) -> str:
    remedy, stage, mask = REMEDIES[row["cause"]], row["seed_stage"], row["action_mask"]
    if stage in LIVE and row["live"] != remedy:
        return "CULL"
    if remedy is not None and row["epoch"] >= GERMINATE_FROM and mask[actions.index(f"GERMINATE_{remedy.upper()}")]:
        return f"GERMINATE_{remedy.upper()}"
    if stage == GERMINATED or (stage == TRAINING and row["seed_epochs_in_stage"] >= TRAIN_EPOCHS):
        return "ADVANCE"
    return "FOSSILIZE" if mask[actions.index("FOSSILIZE")] else "WAIT"


def test_germination_labels_plant_exactly_the_causes_remedy(expert_pack: Path) -> None:
    rows = _rows(expert_pack)
    planted: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["expert_action"].startswith("GERMINATE_"):
            planted[row["cause"]].add(row["expert_action"])
    assert set(REMEDIES) <= {r["cause"] for r in rows}, "the pack must hold every cause"
    for cause, remedy in REMEDIES.items():
        if remedy is None:
            assert planted[cause] == set(), cause  # nothing to plant: never a germination
        else:
            assert planted[cause] == {f"GERMINATE_{remedy.upper()}"}, cause  # that blueprint, and at least once
    # the labels are the expert's, not the behaviour policy's
    assert sum(r["action"] != r["expert_action"] for r in rows) > len(rows) // 10


def test_culls_only_a_live_seed_of_another_blueprint_and_every_label_is_valid(expert_pack: Path) -> None:
    rows = _rows(expert_pack)
    actions = list(open_pack(expert_pack).manifest.actions)
    culls = [r for r in rows if r["expert_action"] == "CULL"]
    assert culls, "the exploring heuristic plants wrong seeds: the expert must cull some"
    for row in culls:
        assert row["seed_stage"] in LIVE and row["live"] != REMEDIES[row["cause"]], row
    for row in rows:
        assert row["action_mask"][actions.index(row["expert_action"])], row


def test_every_label_is_the_rule_applied_to_the_steps_state(expert_pack: Path) -> None:
    rows = _rows(expert_pack)
    actions = list(open_pack(expert_pack).manifest.actions)
    wrong = [(r["episode_id"], r["step"], r["cause"], r["expert_action"], _expected(r, actions))
             for r in rows if r["expert_action"] != _expected(r, actions)]
    assert wrong == []
    assert len({r["expert_action"] for r in rows}) >= 4  # cull, plant, advance, wait at least


def test_training_on_the_expert_needs_the_column(tmp_path: Path, capsys) -> None:
    """A pack written before the column existed: one line naming it, exit 2, nothing written."""
    pack = tmp_path / "pack"
    write_pack_without(pack, make_episodes(0, 30, steps=4, profile="minimal"), "expert_action", profile="minimal")
    assert "expert_action" not in open_pack(pack).schema("steps").names
    capsys.readouterr()
    code = main(["train", str(pack), "--features", "all", "--target", "expert", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "no 'expert_action' column" in err, err
    assert not (tmp_path / "m").exists()
