"""A pack whose `current` link was lost or broken: named for readers, repaired by writers.

`current` is the one name that says which version folder is the pack (commit.py). Removed by hand,
left dangling, pointing at itself or outside the pack, it no longer leads to a manifest, though the
committed version folders are all there. Such a pack was once taken for an interrupted create and
its versions deleted; now a reader is told which link is broken and which complete version is
there (`broken_current`), and a writer (`PackWriter.open_append`, `esper generate --resume`) points
`current` at the last complete version folder again (`repair_current`) before it does anything
else. Nothing here deletes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from telemetry.errors import PackError
from telemetry.packs.commit import (
    CURRENT,
    LINKED,
    VERSIONS,
    _link_target,
    _replace_with_link,
    _versions,
    inside,
    interrupted_create,
    version_name,
)
from telemetry.packs.lock import WriterLock
from telemetry.packs.manifest import MANIFEST_NAME, Manifest, fsync_dir, read_manifest_file


def last_complete_version(root: Path) -> Manifest | None:
    """The newest version folder with a manifest, if every file it lists is there at its recorded size.

    A commit writes its manifest last, so a folder without one is an interrupted commit (skipped);
    a folder whose manifest lists a missing or resized file is damage, and choosing an older version
    instead would let the next writer delete the newer one: that is refused, naming it.
    """
    _, names = _versions(root)
    for name in sorted((n for n in names if n.isdigit()), key=int, reverse=True):
        folder = root / VERSIONS / name
        try:
            manifest = read_manifest_file(folder / MANIFEST_NAME)
        except (PackError, OSError):
            continue
        damaged = [e.path for e in manifest.files if _size(folder / e.path) != e.bytes]
        if version_name(manifest.commit) != name or not inside(root, folder) or damaged:
            what = f"lists {damaged[0]}, which is missing or resized" if damaged else "is not its own commit"
            raise PackError(f"{folder}: the newest version folder {what}; nothing was repaired: run "
                            f"`esper validate` on it, or move it away to fall back to the one before")
        return manifest
    return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _current_state(root: Path) -> str | None:
    """What is wrong with `current` (None when it leads to a version folder's manifest)."""
    link = root / CURRENT
    target = _link_target(link)
    if target is None:
        return "a real folder, not a link" if link.is_dir() else "missing" if not link.exists() else "not a link"
    if target in (CURRENT, f"./{CURRENT}") or (target == os.fspath(link)):
        return "a link that leads to itself"
    try:
        if (link / MANIFEST_NAME).is_file() and inside(root, link):
            return None
    except OSError:
        pass
    if not inside(root, link):
        return f"a link to {target!r}, outside the pack"
    return f"a link to {target!r}, which holds no manifest"


def broken_current(root: Path) -> str | None:
    """For a reader: one line naming what is wrong with `current` and the complete version there,
    and how to repair it; None when `root` is not a pack of this layout or `current` is sound."""
    if not (root / VERSIONS).is_dir() or not any((root / name).is_symlink() for name in (CURRENT, *LINKED)):
        return None
    state = _current_state(root)
    if state is None:
        return None
    if (root / VERSIONS).is_symlink() and not inside(root, root / VERSIONS):
        return (f"{root / VERSIONS}: a link to {_link_target(root / VERSIONS)!r}, outside the pack; a pack's "
                "version folders must lie inside it (move them back in place of the link)")
    try:
        manifest = last_complete_version(root)
    except PackError as exc:
        return f"{root / CURRENT}: {state}; {exc}"
    if manifest is None:
        return (f"{root / CURRENT}: {state}, and no complete version folder is left in {root / VERSIONS}; "
                "the pack cannot be read")
    name = f"{VERSIONS}/{version_name(manifest.commit)}"
    stats = manifest.quick_stats
    return (f"{root / CURRENT}: {state}; the last complete commit is {name} ({stats.episodes} episodes, "
            f"{stats.steps} steps): run `esper repair {root}` (a writer, esper generate --resume or "
            f"PackWriter.open_append, also repairs it), or by hand: ln -sfn {name} {root / CURRENT}")


def repair_current(root: Path) -> Manifest | None:
    """Point a lost or broken `current` at the last complete version folder (under the writer lock).

    Returns that commit's manifest, or None when there was nothing to repair. Nothing is deleted:
    version folders newer than the one chosen are incomplete commits, which the writer's usual
    clean-up (`remove_uncommitted`) removes once `current` leads somewhere again.
    """
    if not root.is_dir() or interrupted_create(root) is not None or broken_current(root) is None:
        return None
    lock = WriterLock.acquire(root)
    try:
        if _current_state(root) is None:  # another writer repaired it meanwhile
            return None
        manifest = last_complete_version(root)
        if manifest is None:
            raise PackError(broken_current(root) or f"{root}: no complete version folder to repair to")
        if (root / CURRENT).is_dir() and not (root / CURRENT).is_symlink():
            raise PackError(f"{root / CURRENT}: a real folder where the link to the last commit belongs; "
                            "move it away, then open the pack again")
        _replace_with_link(root / CURRENT, f"{VERSIONS}/{version_name(manifest.commit)}")
        fsync_dir(root)
        for name in LINKED:
            if _link_target(root / name) != f"{CURRENT}/{name}" and not (root / name).exists():
                _replace_with_link(root / name, f"{CURRENT}/{name}")
        fsync_dir(root)
    finally:
        lock.release()
    return manifest
