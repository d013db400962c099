"""Copies that lost the pack's links (`rsync -r`) or followed them (`cp -rL`): `esper validate` names
each with its fix, `esper repair` restores the layout, and the data are untouched throughout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.packs import assert_bit_equal, read_back, run_cli

from telemetry.errors import PackError
from telemetry.packs.card import CARD_NAME
from telemetry.packs.commit import is_canonical
from telemetry.packs.manifest import read_manifest
from telemetry.packs.validate import validate_pack


def _rsync_r(source: Path, target: Path) -> Path:
    """`rsync -r` without -l: every link skipped ("skipping non-regular file")."""
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-r", f"{source}/", str(target)], check=True, capture_output=True)
    else:
        shutil.copytree(source, target, symlinks=True,
                        ignore=lambda folder, names: [n for n in names if os.path.islink(os.path.join(folder, n))])
    return target


def test_a_copy_without_links_is_named_with_its_fix_and_repaired(pristine, tmp_path, capsys):
    copy = _rsync_r(pristine, tmp_path / "copy")
    assert not (copy / "manifest.json").exists() and (copy / ".versions").is_dir()
    with pytest.raises(PackError, match="not a pack"):
        read_manifest(copy)
    code, out, _ = run_cli(capsys, "validate", str(copy))
    assert code == 1
    [line] = out.splitlines()
    version = read_manifest(pristine).commit
    assert line.startswith(f"{copy}: a copy without the pack's links (`rsync -r` without -l or -a?): "
                           f".versions/{version:06d} holds the last commit")
    assert f"run `esper repair {copy}`" in line and "rsync -a" in line
    code, out, _ = run_cli(capsys, "repair", str(copy))
    assert code == 0 and "restored the links" in out
    assert validate_pack(copy) == [] and is_canonical(copy, read_manifest(copy))
    assert_bit_equal(read_back(copy), read_back(pristine))


def test_a_copy_that_followed_links_is_named_and_converted_back(pristine, tmp_path, capsys):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-rL", str(pristine), str(copy)], check=True)
    assert not (copy / "current").is_symlink()
    size = sum(p.stat().st_size for p in copy.rglob("*.parquet") if p.is_file())
    code, out, _ = run_cli(capsys, "validate", str(copy))
    [line] = out.splitlines()
    assert code == 1 and line.startswith(f"{copy}: a copy that followed the pack's links (cp -rL, zip, "
                                         "shutil.copytree?): 3 duplicated folders (current, steps, episodes)")
    assert "stored up to 3 times" in line and f"run `esper repair {copy}`" in line
    code, out, _ = run_cli(capsys, "repair", str(copy))
    assert code == 0 and "replaced current, manifest.json, README.md, steps, episodes by links" in out
    assert validate_pack(copy) == [] and (copy / CARD_NAME).is_symlink()
    stored = sum(p.stat().st_size for p in copy.rglob("*.parquet") if p.is_file() and not p.is_symlink())
    assert stored * 3 <= size + 3 * 4096  # the data is stored once again (rglob does not enter links)
    assert_bit_equal(read_back(copy), read_back(pristine))


def test_repair_of_something_that_is_not_a_pack_is_bad_input(tmp_path, capsys):
    code, _, err = run_cli(capsys, "repair", str(tmp_path / "absent"))
    assert code == 2 and "no such pack" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "repair", str(tmp_path / "empty"))
    assert code == 2 and "not a pack" in err


def test_repair_points_a_removed_current_at_the_last_complete_commit(pristine, tmp_path, capsys):
    """`rm PACK/current`: every committed version is kept, the reader names the fix, repair applies it."""
    copy = Path(shutil.copytree(pristine, tmp_path / "copy", symlinks=True))
    versions = sorted(p.name for p in (copy / ".versions").iterdir())
    (copy / "current").unlink()
    with pytest.raises(PackError, match=f"run `esper repair {copy}`"):
        read_manifest(copy)
    code, out, _ = run_cli(capsys, "repair", str(copy))
    commit = read_manifest(pristine).commit
    assert code == 0 and f"pointed current at .versions/{commit:06d}" in out, out
    assert sorted(p.name for p in (copy / ".versions").iterdir()) == versions
    assert validate_pack(copy) == []
    assert_bit_equal(read_back(copy), read_back(pristine))
