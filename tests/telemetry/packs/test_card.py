"""The dataset card: Hugging Face `datasets` reads its configs and gets exactly the pack's splits and
row counts; it is written with every commit, through `current`, and a pack written before cards
gets one from `esper repair` or its next writer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from support.packs import described_episodes, reference, run_cli

from telemetry.packs.card import CARD_NAME, GUARD_NAME, hf_split, render_card
from telemetry.packs.manifest import MANIFEST_NAME, read_manifest
from telemetry.packs.reader import open_pack
from telemetry.packs.validate import notes, validate_pack
from telemetry.packs.writer import PackWriter

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: the loader must not need a network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _front_matter(path: Path) -> dict:
    text = (path / CARD_NAME).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_loader_gives_exactly_the_packs_splits_with_the_manifests_row_counts(described_pack, tmp_path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets (the dev extra) is not installed")
    manifest = read_manifest(described_pack)
    pack = open_pack(described_pack)
    assert set(manifest.splits) == {"train", "val", "test"} and all(s.episodes for s in manifest.split_stats.values())
    for table in ("steps", "episodes"):
        loaded = datasets.load_dataset(str(described_pack), table, cache_dir=str(tmp_path / "cache"))
        assert sorted(loaded) == ["test", "train", "validation"]
        for split, stats in manifest.split_stats.items():
            rows = loaded[hf_split(split)]
            assert rows.num_rows == (stats.steps if table == "steps" else stats.episodes)
            # the same rows as the project's reader, not merely as many
            ours = getattr(pack, table)(split=split, columns=["episode_id"]).column(0).to_pylist()
            assert sorted(rows["episode_id"]) == sorted(ours)
    with pytest.raises(ValueError, match="Config name is missing"):  # a whole-pack load is refused, not mixed
        datasets.load_dataset(str(described_pack), cache_dir=str(tmp_path / "cache"))


def test_the_last_commits_folder_alone_loads_the_same_as_on_a_hub(described_pack, tmp_path):
    """What the README says to upload: PACK/current as plain files (no links), guard left out."""
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets (the dev extra) is not installed")
    upload = Path(shutil.copytree(described_pack / "current", tmp_path / "upload",
                                  ignore=shutil.ignore_patterns("NOT-A-TABLE*")))
    assert not any(p.is_symlink() for p in upload.rglob("*"))
    manifest = read_manifest(described_pack)
    loaded = datasets.load_dataset(str(upload), "steps", cache_dir=str(tmp_path / "cache"))
    expected = {hf_split(s): st.steps for s, st in manifest.split_stats.items()}
    assert {k: v.num_rows for k, v in loaded.items()} == expected


def test_the_card_describes_the_pack_and_every_column(described_pack):
    manifest = read_manifest(described_pack)
    text = (described_pack / CARD_NAME).read_text(encoding="utf-8")
    assert text == render_card(manifest)
    configs = {c["config_name"]: c["data_files"] for c in _front_matter(described_pack)["configs"]}
    assert configs["steps"] == [{"split": "train", "path": "steps/split=train/*.parquet"},
                                {"split": "validation", "path": "steps/split=val/*.parquet"},
                                {"split": "test", "path": "steps/split=test/*.parquet"}]
    stats = manifest.split_stats["val"]
    assert f"| `split=val` | validation | {stats.episodes} | {stats.steps} |" in text
    assert f"recorded with the `{manifest.telemetry_config.profile_name}` telemetry profile" in text
    for column in manifest.columns:  # every column has its row in the card's table
        assert f"| `{column.name}` | {column.dtype} |" in text.replace("\\|", "|"), column.name
    assert "| `3` | GERMINATE_NORM |" in text and "| `2` | TRAINING |" in text  # mask positions, seed stages


def test_the_card_is_written_with_each_commit_through_current(tmp_path):
    config, schema, profiles = reference()
    path = tmp_path / "p"
    episodes = described_episodes(12)
    with PackWriter.create(path, config, schema, profiles=profiles) as writer:
        assert _front_matter(path).get("configs") is None  # an empty pack: nothing for a loader to read
        for i, (episode, steps) in enumerate(episodes):
            writer.add_episode(episode, steps)
            if i % 4 == 3:
                manifest = writer.commit()
                assert os.readlink(path / CARD_NAME) == f"current/{CARD_NAME}"
                assert (path / CARD_NAME).read_text(encoding="utf-8") == render_card(manifest)
                listed = {f["split"] for c in _front_matter(path)["configs"] for f in c["data_files"]}
                assert listed == {hf_split(s) for s in manifest.splits if manifest.files_of("steps", [s])}
    assert (path / CARD_NAME).read_text(encoding="utf-8") == render_card(read_manifest(path))


def _as_written_before_cards(path: Path) -> None:
    """What a pack of format 1.0 looks like: no card, no glob guard, no column descriptions."""
    version = path / os.readlink(path / "current")
    for name in (CARD_NAME, GUARD_NAME):
        (version / name).unlink()
        (path / name).unlink()
    document = json.loads((version / MANIFEST_NAME).read_text())
    document.pop("columns")
    document["format_version"] = "1.0"
    (version / MANIFEST_NAME).write_text(json.dumps(document))


def test_a_pack_written_before_cards_is_sound_and_gets_one_from_repair(described_pack, tmp_path, capsys):
    path = Path(shutil.copytree(described_pack, tmp_path / "old", symlinks=True))
    _as_written_before_cards(path)
    assert read_manifest(path).columns == []
    assert validate_pack(path) == [] and "esper repair" in notes(path)[0]
    code, out, _ = run_cli(capsys, "validate", str(path))
    assert code == 0 and f"note: {path}: no {CARD_NAME} or {GUARD_NAME}" in out
    code, out, _ = run_cli(capsys, "repair", str(path))
    assert code == 0 and f"wrote the dataset card {CARD_NAME}" in out
    assert validate_pack(path) == [] and notes(path) == []
    text = (path / CARD_NAME).read_text(encoding="utf-8")
    assert text == render_card(read_manifest(path)) and "| `action_mask` |" in text  # columns derived
    code, out, _ = run_cli(capsys, "repair", str(path))
    assert code == 0 and "nothing to repair" in out
