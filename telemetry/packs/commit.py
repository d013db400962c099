"""A pack's folders: every commit is a version folder, and renaming one link publishes it.

    PACK/manifest.json -> current/manifest.json
    PACK/README.md     -> current/README.md       the dataset card (card.py), rendered from the manifest
    PACK/steps         -> current/steps           what plain tools glob: PACK/steps/**/*.parquet
    PACK/episodes      -> current/episodes
    PACK/current       -> .versions/000042        the last commit
    PACK/.versions/000042/manifest.json, README.md, steps/split=*/part-*.parquet, episodes/split=*/...
    PACK/.versions/000041/...                     the commit before (kept for readers racing a commit)
    PACK/_staging/                                files being written, part of no commit
    PACK/NOT-A-TABLE--....parquet, and one in each version folder: the glob guard (below)

Whole-pack globs. A recursive glob over the pack reaches the data more than once (through
`current`, the table links and `.versions`, as each tool follows links and hidden folders its own
way) and mixes two tables of different schemas, so no answer it gives is right. Such globs are
refused instead of misread: a guard file named `*.parquet` that is not Parquet sits at the top of
the pack and in every version folder, where every recursive glob of the whole pack finds it (tools
that skip hidden folders through `current`, tools that do not follow links in `.versions`), and no
glob of one table does. The tool fails naming the file, whose name says what to read instead.

A commit builds the next version folder where nothing reads it: hard links to the files it keeps
(no data is copied), its new files renamed in, its manifest, everything fsynced. Then a new link to
that folder is renamed over `current` (atomic on POSIX) and the pack folder is fsynced: that rename
is the commit. Every path into a pack goes through `current`, so the manifest and the files a glob
lists belong to the last commit at every instant, a crash at any instant included. Version folders
other than the current one and the one before it are deleted after the rename (data files live on
while a kept version links them), and a closing writer keeps only the current one; the next writer
deletes what an interrupted commit left.

A pack of the earlier layout (real table folders, manifest.json a regular file), or a copy made by
a tool that followed the links, reads as before, and `migrate` converts it when a writer opens it.
A create killed before its first publish leaves only links, a lock file and an unpublished version
folder: `recover_interrupted_create` clears that, so the create can start again. Anything holding a
commit after the empty first one is never cleared: a pack whose `current` link was lost or broken
is repaired to its last complete version folder instead (current_link.py).

This module is the whole commit protocol; `PackWriter` stages files and calls it. Every step of it
passes a named checkpoint (faults.py), where the crash tests inject kills.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from telemetry.errors import PackError
from telemetry.packs import faults
from telemetry.packs.card import CARD_NAME, GUARD_NAME, GUARD_TEXT, render_card
from telemetry.packs.lock import LOCK_NAME, WriterLock
from telemetry.packs.manifest import (
    MANIFEST_NAME,
    TABLES,
    FileEntry,
    Manifest,
    fsync_dir,
    named_os_error,
    write_manifest_file,
)

VERSIONS = ".versions"
CURRENT = "current"
TMP = ".tmp-"  # prefix of the pack folder's temporary names (links being swapped in, folders swapped out)
EARLIER_TMP = f".{MANIFEST_NAME}.tmp"  # the earlier layout's manifest being written
LINKED = (MANIFEST_NAME, CARD_NAME, *TABLES)  # the names that lead through `current`

Checkpoint = Callable[[str], None]
_no_checkpoint = faults.no_checkpoint


def version_name(commit: int) -> str:
    return f"{commit:06d}"


def version_dir(root: Path, commit: int) -> Path:
    return root / VERSIONS / version_name(commit)


def is_versioned(root: Path) -> bool:
    """Whether `current` is a link (this layout), as opposed to an earlier layout or a copy that followed links."""
    return (root / CURRENT).is_symlink()


def _link_target(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # absent, or not a link
        return None


def is_canonical(root: Path, manifest: Manifest) -> bool:
    """`current` leads to the version folder of `manifest` and every top-level name leads through it."""
    return (_link_target(root / CURRENT) == f"{VERSIONS}/{version_name(manifest.commit)}"
            and all(_link_target(root / name) == f"{CURRENT}/{name}" for name in LINKED))


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, every link followed, lies inside the pack (a planted link could lead out)."""
    base = os.path.realpath(root)
    return os.path.realpath(path).startswith(base + os.sep)


# ---- creating and committing ---------------------------------------------------------------------

def create_links(root: Path) -> None:
    """A new pack's top-level names, leading through `current` (which the first `publish` creates),
    and the glob guard."""
    for name in LINKED:
        try:
            os.symlink(f"{CURRENT}/{name}", root / name)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise PackError(f"{root}: the filesystem does not support symbolic links, which a pack "
                                f"needs ({exc.strerror}); write the pack elsewhere") from None
            raise
    write_guard(root)


def publish(root: Path, manifest: Manifest, checkpoint: Checkpoint = _no_checkpoint) -> None:
    """Make `manifest` the pack's commit: its data files are in place in its version folder.

    Writes and fsyncs manifest.json in the version folder, fsyncs the folders, then renames a new
    link to the folder over `current` and fsyncs the pack folder.
    """
    _publish_text(root, manifest, manifest.to_json(), checkpoint)


def commit_version(root: Path, previous: Manifest, manifest: Manifest,
                   new_files: list[tuple[Path, FileEntry]]) -> None:
    """Publish `manifest`, the commit after `previous`: steps 2-4 of a commit (see PackWriter).

    Its version folder gets hard links to the files it keeps from `previous`'s folder (no data is
    copied) and each staged file of `new_files` renamed in; then `publish` makes it the commit.
    """
    faults.checkpoint("staged")
    source, version = version_dir(root, previous.commit), version_dir(root, manifest.commit)
    if version.exists():  # left by a commit that failed in this process: nothing reads it
        shutil.rmtree(version)
    new = {entry.path for _, entry in new_files}
    folders = set()
    for entry in manifest.files:
        if entry.path not in new:
            folders.add(_link_kept(root, entry.path, source, version))
    faults.checkpoint("linked")
    for staged, entry in new_files:
        target = version / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        folders.add(target.parent)
        faults.checkpoint("renamed")
    for folder in folders:
        fsync_dir(folder)
    publish(root, manifest, faults.checkpoint)


def _link_kept(root: Path, path: str, source: Path, version: Path) -> Path:
    """Hard-link a kept file from the previous version folder into the new one; returns its folder."""
    target = version / path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source / path, target, follow_symlinks=False)
    except FileNotFoundError:
        raise PackError(f"{root / path}: listed in manifest.json but missing; "
                        f"run `esper validate {root}`") from None
    return target.parent


def _publish_text(root: Path, manifest: Manifest, text: str, checkpoint: Checkpoint) -> None:
    version = version_dir(root, manifest.commit)
    for table in TABLES:
        (version / table).mkdir(parents=True, exist_ok=True)
    write_extras(version, manifest)
    write_manifest_file(version / MANIFEST_NAME, text)
    for folder in (*(version / t for t in TABLES), version, root / VERSIONS):
        fsync_dir(folder)
    checkpoint("manifest_staged")
    _replace_with_link(root / CURRENT, f"{VERSIONS}/{version.name}")
    fsync_dir(root)
    checkpoint("manifest_replaced")


def write_extras(version: Path, manifest: Manifest) -> None:
    """What a version folder holds besides the manifest and the tables: the card and the glob guard.

    Written under a temporary name and renamed, so that a folder readers already see (a pack written
    before cards, converted by `migrate`) never shows a half-written card."""
    _write_renamed(version / CARD_NAME, render_card(manifest))
    write_guard(version)


def write_guard(folder: Path) -> None:
    if not (folder / GUARD_NAME).is_file():
        _write_renamed(folder / GUARD_NAME, GUARD_TEXT)


def _write_renamed(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP}{path.name}")
    write_manifest_file(tmp, text)
    os.replace(tmp, path)


def _replace_with_link(path: Path, target: str) -> None:
    """Atomically make `path` (absent, a file or a link) a link to `target`."""
    tmp = path.with_name(f"{TMP}{path.name}")
    _remove(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise named_os_error(exc, path) from exc


def _versions(root: Path) -> tuple[str | None, list[str]]:
    """The current version folder's name (None unless `current` leads into .versions) and all names there."""
    current = _link_target(root / CURRENT)
    name = current.removeprefix(f"{VERSIONS}/") if current and current.startswith(f"{VERSIONS}/") else None
    try:
        names = sorted(os.listdir(root / VERSIONS))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    return (name if name is not None and name.isdigit() else None), names


def _kept(name: str, names: list[str], previous: bool = True) -> set[str]:
    """The current version and (with `previous`) the one before it."""
    earlier = [n for n in names if n.isdigit() and int(n) < int(name)]
    return {name, *([max(earlier, key=int)] if earlier and previous else [])}


def prune(root: Path, checkpoint: Checkpoint = _no_checkpoint, keep_previous: bool = True) -> None:
    """Delete every version folder but the current one and (by default) the one before it.

    The one before stays while a writer works, so that a reader that resolved `current` just before
    a commit, or opened the previous manifest, still finds its files; newer folders (an interrupted
    commit's) go too. A closing writer keeps only the current one: after a compaction the one before
    holds the superseded small files.
    """
    name, names = _versions(root)
    if name is None:
        return
    kept = _kept(name, names, keep_previous)
    for other in names:
        if other not in kept:
            _remove(root / VERSIONS / other)
            checkpoint("old_deleted")


def remove_uncommitted(root: Path) -> None:
    """What a failed or interrupted commit left: temporary names, version folders after the current one."""
    for path in [*root.glob(f"{TMP}*"), root / EARLIER_TMP]:
        _remove(path)
    name, names = _versions(root)
    if name is None:
        return
    for other in names:
        if not other.isdigit() or int(other) > int(name):
            _remove(root / VERSIONS / other)


def leftovers(root: Path) -> list[Path]:
    """Names no reader uses that the next writer deletes (left by an interrupted write)."""
    found = sorted(root.glob(f"{TMP}*"))
    name, names = _versions(root)
    if name is not None:
        found += [root / VERSIONS / n for n in names if n not in _kept(name, names)]
    return found


def interrupted_create(root: Path) -> list[Path] | None:
    """What a writer killed inside `PackWriter.create` leaves (it never published a manifest), or
    None when `root` holds anything else. The lock file is not listed.

    Such a writer published at most commit 0, the empty pack, and still held its lock file (a
    writer removes it when it closes): a pack with any later version folder, or an empty pack that
    was closed, lost its `current` link some other way and is repaired, never cleared.
    """
    if (root / CURRENT).exists() or (root / CURRENT).is_symlink():
        return None
    _, names = _versions(root)
    if any(name != version_name(0) for name in names) or (names and not (root / LOCK_NAME).exists()):
        return None
    found = []
    for path in root.iterdir():
        if path.name == LOCK_NAME:
            continue
        if (path.name in LINKED and path.is_symlink()) or path.name in (VERSIONS, EARLIER_TMP, GUARD_NAME) \
                or path.name.startswith(TMP):
            found.append(path)
        else:
            return None
    return found


def recover_interrupted_create(root: Path) -> bool:
    """Clear what a create killed before its first publish left; True when there was such a thing.

    Takes the writer lock first, so a create that is still running is refused, not undone.
    """
    if not root.is_dir() or interrupted_create(root) is None:
        return False
    lock = WriterLock.acquire(root)
    try:
        remove(interrupted_create(root) or [])
    finally:
        lock.release()  # removes the lock file: the folder is empty again
    return True


def remove(paths: list[Path]) -> None:
    for path in paths:
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---- converting another layout -------------------------------------------------------------------

def migrate(root: Path, manifest: Manifest, checkpoint: Checkpoint = _no_checkpoint) -> None:
    """Bring any other layout to this one, keeping the commit readers see now (`manifest`).

    Handles a pack of the earlier layout, a copy that followed the links (real folders where links
    were), and a conversion cut short. The version folder is built from the files the manifest
    lists (hard links) and published; then each top-level name is swapped for its link, a folder
    by an atomic exchange where the system offers one (Linux renameat2). Readers see the same
    files before and after every step; unlisted files of the earlier layout are dropped.
    """
    text = (root / MANIFEST_NAME).read_text(encoding="utf-8")
    version = version_dir(root, manifest.commit)
    target = f"{VERSIONS}/{version.name}"
    if _link_target(root / CURRENT) == target:
        try:
            same = (version / MANIFEST_NAME).read_text(encoding="utf-8") == text
        except OSError:
            same = False
        if not same:
            raise PackError(f"{root}: {MANIFEST_NAME} differs from {version / MANIFEST_NAME}, which "
                            f"`current` leads to; run `esper validate {root}`")
        if not (version / CARD_NAME).is_file():  # a pack written before cards: add it where links lead
            write_extras(version, manifest)
    else:  # nothing leads into the folder: (re)build it
        if version.exists() or version.is_symlink():
            _remove(version)
        folders = set()
        for entry in manifest.files:
            source, path = root / entry.path, version / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, path, follow_symlinks=False)
            except FileNotFoundError:
                raise PackError(f"{source}: listed in manifest.json but missing; "
                                f"run `esper validate {root}`") from None
            folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)
        checkpoint("migrate_linked")
        if (root / CURRENT).is_dir() and not (root / CURRENT).is_symlink():  # a copy's folder: unread
            old = root / f"{TMP}old-{CURRENT}"
            os.rename(root / CURRENT, old)
            shutil.rmtree(old)
        _publish_text(root, manifest, text, checkpoint=_no_checkpoint)
    checkpoint("migrate_published")
    write_guard(root)
    for name in LINKED:
        if _link_target(root / name) != f"{CURRENT}/{name}":
            _swap_in_link(root / name, f"{CURRENT}/{name}", checkpoint)
            fsync_dir(root)
            checkpoint("migrate_swapped")
    remove_uncommitted(root)
    prune(root)
    fsync_dir(root)


def _swap_in_link(path: Path, target: str, checkpoint: Checkpoint = _no_checkpoint) -> None:
    """Make `path` a link to `target`; a real folder there is exchanged with the link (then deleted)."""
    if path.is_symlink() or not path.is_dir():
        _replace_with_link(path, target)
        return
    link, old = path.with_name(f"{TMP}{path.name}"), path.with_name(f"{TMP}old-{path.name}")
    _remove(link)
    _remove(old)
    os.symlink(target, link)
    if _exchange(link, path):
        old = link  # the folder now has the link's name
    else:  # no atomic exchange on this system: for a moment there is no `path`
        os.rename(path, old)
        checkpoint("migrate_moved_aside")
        os.replace(link, path)
    fsync_dir(path.parent)
    shutil.rmtree(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two names (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


# ---- checking ------------------------------------------------------------------------------------

def layout_problems(root: Path, manifest: Manifest) -> list[str]:
    """For `esper validate`: the links of this layout, where `current` is a link."""
    if not is_versioned(root):
        return []
    problems = []
    current = _link_target(root / CURRENT)
    expected = f"{VERSIONS}/{version_name(manifest.commit)}"
    if current != expected:
        problems.append(f"{root / CURRENT}: leads to {current!r}, expected {expected!r} "
                        f"(the version folder of commit {manifest.commit})")
    elif not inside(root, root / CURRENT):
        problems.append(f"{root / CURRENT}: leads to {current!r}, which lies outside the pack (at "
                        f"{os.path.realpath(root / CURRENT)}: {VERSIONS} is a link that leads out)")
    for name in LINKED:
        found = _link_target(root / name)
        if name == CARD_NAME and found is None and not (root / name).exists():
            continue  # a pack written before dataset cards: validate notes it, the next writer adds it
        if found != f"{CURRENT}/{name}":
            what = "not a link" if found is None else f"a link to {found!r}"
            problems.append(f"{root / name}: {what}, expected a link to '{CURRENT}/{name}' "
                            "(plain Parquet readers would not read the last commit)")
    return problems
