"""A pack whose `current` link was lost or broken keeps every committed version: readers name the link
and the last complete version, a writer points `current` at that version again, and only a create
that never committed anything past the empty pack is ever cleared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.packs import (
    FAULT_EPISODES,
    FAULT_MORE,
    FAULT_PROFILE,
    FAULT_SPLITS,
    assert_bit_equal,
    expected_steps,
    read_back,
    reference,
    write_pack,
)

from telemetry.errors import PackError
from telemetry.packs.commit import interrupted_create, recover_interrupted_create
from telemetry.packs.current_link import broken_current, last_complete_version, repair_current
from telemetry.packs.lock import LOCK_NAME
from telemetry.packs.manifest import MANIFEST_NAME, read_manifest
from telemetry.packs.reader import open_pack
from telemetry.packs.validate import validate_pack
from telemetry.packs.writer import PackWriter


def versions(pack: Path) -> dict[str, set[str]]:
    """Every version folder and the files in it (what must survive)."""
    return {v.name: {str(p.relative_to(v)) for p in v.rglob("*")} for v in (pack / ".versions").iterdir()}


@pytest.fixture
def linked(pristine: Path, tmp_path: Path) -> Path:
    """A copy that keeps the links (cp -a)."""
    return Path(shutil.copytree(pristine, tmp_path / "pack", symlinks=True))


def break_current(pack: Path, how: str, tmp_path: Path) -> None:
    (pack / "current").unlink()
    if how == "dangling":
        os.symlink(".versions/000999", pack / "current")
    elif how == "loop":
        os.symlink("current", pack / "current")
    elif how == "outside":
        elsewhere = shutil.copytree(pack / ".versions", tmp_path / "elsewhere")
        os.symlink(str(next(elsewhere.iterdir())), pack / "current")


@pytest.mark.parametrize("how, state", [("removed", "missing"), ("dangling", "a link to '.versions/000999', which"),
                                        ("loop", "a link that leads to itself"), ("outside", "outside the pack")])
def test_a_broken_current_is_named_and_a_writer_repairs_it_without_losing_a_commit(
        linked: Path, tmp_path: Path, how: str, state: str) -> None:
    manifest = read_manifest(linked)
    kept = versions(linked)
    break_current(linked, how, tmp_path)
    name = f".versions/{manifest.commit:06d}"
    with pytest.raises(PackError) as caught:
        open_pack(linked)
    message = str(caught.value)
    assert message.startswith(f"{linked / 'current'}: ") and state in message and "\n" not in message
    assert f"the last complete commit is {name} ({manifest.quick_stats.episodes} episodes" in message
    assert f"ln -sfn {name} {linked / 'current'}" in message
    assert interrupted_create(linked) is None and recover_interrupted_create(linked) is False
    assert versions(linked) == kept  # nothing was deleted by looking
    config, schema, _ = reference(FAULT_PROFILE)
    with PackWriter.open_append(linked, config, schema) as writer:  # the repair, then an append
        assert writer.manifest.commit == manifest.commit
        for episode, steps in FAULT_MORE:
            writer.add_episode(episode, steps)
    assert_bit_equal(read_back(linked), expected_steps([*FAULT_EPISODES, *FAULT_MORE], FAULT_PROFILE))
    assert validate_pack(linked) == []


def test_repair_skips_a_commit_cut_short_and_refuses_a_damaged_newest_version(linked: Path) -> None:
    """A version folder without a manifest is a commit cut short (the manifest is written last): the
    repair falls back past it. One whose manifest lists a missing file is damage: falling back would
    let the next writer delete it, so nothing is repaired and the folder is named."""
    manifest = read_manifest(linked)
    newer = linked / ".versions" / f"{manifest.commit + 1:06d}"
    shutil.copytree(linked / ".versions" / f"{manifest.commit:06d}", newer)
    (newer / MANIFEST_NAME).unlink()
    (linked / "current").unlink()
    assert last_complete_version(linked).commit == manifest.commit
    assert repair_current(linked).commit == manifest.commit
    assert os.readlink(linked / "current") == f".versions/{manifest.commit:06d}"
    assert broken_current(linked) is None and repair_current(linked) is None  # nothing left to repair
    assert_bit_equal(read_back(linked), expected_steps(FAULT_EPISODES, FAULT_PROFILE))
    assert not (linked / LOCK_NAME).exists()
    (newer / MANIFEST_NAME).write_text(manifest.model_copy(update={"commit": manifest.commit + 1}).to_json())
    (newer / manifest.files[0].path).unlink()  # a data file the manifest lists (not the glob guard)
    (linked / "current").unlink()
    kept = versions(linked)
    with pytest.raises(PackError, match=f"{newer}: the newest version folder lists .* missing or resized"):
        repair_current(linked)
    assert "nothing was repaired" in broken_current(linked)
    assert versions(linked) == kept


def test_a_pack_with_no_complete_version_is_refused_and_left_alone(linked: Path) -> None:
    (linked / "current").unlink()
    for manifest in (linked / ".versions").glob(f"*/{MANIFEST_NAME}"):
        manifest.write_text("{")
    kept = versions(linked)
    with pytest.raises(PackError, match="current: missing, and no complete version folder is left in"):
        read_manifest(linked)
    config, schema, _ = reference(FAULT_PROFILE)
    with pytest.raises(PackError, match="no complete version folder"):
        PackWriter.open_append(linked, config, schema)
    assert versions(linked) == kept


def test_a_create_killed_before_its_first_commit_is_still_cleared(tmp_path: Path) -> None:
    """What a create leaves before `current` exists: links, its lock file, an unpublished commit 0."""
    pack = tmp_path / "new"
    write_pack(pack, [], profile=FAULT_PROFILE, splits=FAULT_SPLITS)
    (pack / "current").unlink()
    (pack / LOCK_NAME).write_text("{}")  # a writer that never closed
    assert interrupted_create(pack) is not None
    assert recover_interrupted_create(pack) is True
    assert list(pack.iterdir()) == []
    (tmp_path / "closed").mkdir()
    write_pack(tmp_path / "closed" / "pack", [], profile=FAULT_PROFILE)
    (tmp_path / "closed" / "pack" / "current").unlink()  # an empty pack that was closed: repaired, not cleared
    assert interrupted_create(tmp_path / "closed" / "pack") is None


def test_a_versions_folder_that_leads_outside_is_named(linked: Path, tmp_path: Path) -> None:
    """Readers refuse a manifest outside the pack; the message names the link, not a riddle."""
    moved = shutil.move(linked / ".versions", tmp_path / "versions-elsewhere")
    os.symlink(moved, linked / ".versions")
    with pytest.raises(PackError, match=f"{linked / '.versions'}: a link to '{moved}', outside the pack"):
        validate_pack(linked)
