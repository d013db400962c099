"""Copies that lost or followed a pack's links: named for `esper validate`, undone by `esper repair`.

A pack is made of links (commit.py), and common ways of copying a folder damage it in two ways:

- `rsync -r` without `-l` (or `-a`) skips links: the copy holds `.versions/` and nothing that leads
  into it, so it reads as "not a pack";
- a copy that follows links (`cp -rL`, `zip -r`, `shutil.copytree`) holds real folders where the
  links were: `current`, `steps` and `episodes` repeat the version folder, the data is stored three
  times, and every tool that walks the whole folder meets each file several times.

Both keep everything the last commit needs, so `repair_pack` restores the layout without touching
the data: it points a lost or broken `current` at the last complete commit (current_link.py),
recreates the links of a copy that lost them, then opens the pack as a writer, which
converts a copy that followed them (commit.migrate) and adds a dataset card a pack written before
cards lacks.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from telemetry.errors import PackError
from telemetry.packs.card import CARD_NAME
from telemetry.packs.commit import CURRENT, LINKED, VERSIONS, is_canonical, version_name
from telemetry.packs.current_link import repair_current
from telemetry.packs.manifest import MANIFEST_NAME, TABLES, read_manifest

_FIX = "or copy the original again with `cp -a` or `rsync -a`, which keep links"


def _versions_with_manifest(root: Path) -> list[Path]:
    """Version folders holding a manifest, newest first."""
    try:
        names = sorted((n for n in os.listdir(root / VERSIONS) if n.isdigit()), key=int, reverse=True)
    except OSError:
        return []
    return [root / VERSIONS / n for n in names if (root / VERSIONS / n / MANIFEST_NAME).is_file()]


def lost_links(root: Path) -> Path | None:
    """The version folder a copy without links still holds, or None when that is not the case.

    The newest folder holding a manifest: a commit writes its manifest after its data files are in
    place, so such a folder is complete (if the copy caught a commit that was interrupted before its
    publication, that commit is the one restored)."""
    entry = root / MANIFEST_NAME
    if entry.exists() or entry.is_symlink() or (root / CURRENT).exists() or (root / CURRENT).is_symlink():
        return None
    found = _versions_with_manifest(root)
    return found[0] if found else None


def followed_links(root: Path) -> list[str]:
    """The names that a copy following links turned into real folders (or files): current, steps, ..."""
    if not (root / VERSIONS).is_dir():
        return []  # the earlier layout (no version folders) has real folders by design
    return [name for name in (CURRENT, *LINKED)
            if (root / name).exists() and not (root / name).is_symlink()]


def copy_problems(root: Path) -> list[str]:
    """One line naming a copy that lost or followed the pack's links, with the fix; empty otherwise."""
    version = lost_links(root)
    if version is not None:
        missing = ", ".join([CURRENT, *LINKED])
        return [f"{root}: a copy without the pack's links (`rsync -r` without -l or -a?): {VERSIONS}/{version.name} "
                f"holds the last commit but {missing} are missing; run `esper repair {root}` to restore them, "
                f"{_FIX}"]
    real = followed_links(root)
    folders = [n for n in real if (root / n).is_dir()]
    if not real:
        return []
    copies = 1 + (CURRENT in folders) + any(t in folders for t in TABLES)
    return [f"{root}: a copy that followed the pack's links (cp -rL, zip, shutil.copytree?): {len(folders)} "
            f"duplicated folders ({', '.join(folders)}) and {len(real) - len(folders)} files where links "
            f"belong; the data is stored up to {copies} times and tools that walk the whole folder read "
            f"it more than once; run `esper repair {root}` to restore the links, {_FIX}"]


def restore_links(root: Path, version: Path) -> None:
    """Recreate `current` (leading to `version`) and the names that lead through it."""
    for name in LINKED:
        if not (root / name).is_symlink():
            os.symlink(f"{CURRENT}/{name}", root / name)
    os.symlink(f"{VERSIONS}/{version.name}", root / CURRENT)


def repair_pack(path: str | os.PathLike[str]) -> list[str]:
    """Restore a damaged copy's layout (see the module docstring); returns what was done, one line each."""
    root = Path(path)
    done = []
    relinked = repair_current(root)
    if relinked is not None:
        done.append(f"pointed {CURRENT} at {VERSIONS}/{version_name(relinked.commit)}, the last complete commit")
    version = lost_links(root)
    if version is not None:
        restore_links(root, version)
        done.append(f"restored the links to {VERSIONS}/{version.name} ({CURRENT}, {', '.join(LINKED)})")
    manifest = read_manifest(root)
    folders = followed_links(root)
    card = (root / CARD_NAME).exists()
    if is_canonical(root, manifest) and card:
        return done
    from telemetry.packs.writer import PackWriter  # imports torch (the feature schema); only when needed

    PackWriter.open_append(root, manifest.telemetry_config, manifest.features()).close(compact=False)
    if folders:
        done.append(f"replaced {', '.join(folders)} by links (the data is stored once again)")
    if not card:
        done.append(f"wrote the dataset card {CARD_NAME}")
    if not is_canonical(root, read_manifest(root)):
        raise PackError(f"{root}: the layout could not be restored; run `esper validate {root}`")
    return done


def cmd_repair(args: argparse.Namespace) -> int:
    root = Path(args.pack)
    if not root.is_dir():
        raise PackError(f"{root}: no such pack (expected a pack folder)")
    done = repair_pack(root)
    for line in done:
        print(line)
    commit = read_manifest(root).commit
    print(f"{root}: {'repaired' if done else 'nothing to repair'} (commit {version_name(commit)})")
    return 0
