"""A full disk (ENOSPC injected at each step of a commit) names the cause and the file, keeps the
previous commit and leaves nothing of the failed one, and a later writer appends."""

from __future__ import annotations

import builtins
import errno
import os
import re
from pathlib import Path
from typing import Any

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
)

from telemetry.errors import PackError
from telemetry.packs import manifest as manifest_module
from telemetry.packs import staging
from telemetry.packs.lock import LOCK_NAME
from telemetry.packs.manifest import MANIFEST_NAME, read_manifest
from telemetry.packs.staging import STAGING
from telemetry.packs.validate import leftovers, validate_pack
from telemetry.packs.writer import PackWriter

PROFILE, SPLITS, EPISODES, MORE = FAULT_PROFILE, FAULT_SPLITS, FAULT_EPISODES, FAULT_MORE
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


# ---- a full disk ---------------------------------------------------------------------------------

def _enospc(*filenames: str) -> OSError:
    """What the kernel reports: write() and fsync() errors carry no file name, rename errors do."""
    return OSError(errno.ENOSPC, NO_SPACE, *filenames)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class _FullFile:
    """A text file on a disk that fills up half-way through the write."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, text: str) -> int:
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise _enospc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


class DiskFull:
    """Injects ENOSPC at one step of the commit protocol while armed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
        self.armed = False
        self.hits = 0
        real_fsync, real_replace, real_link, real_write = os.fsync, os.replace, os.link, staging._HashingFile.write

        def fsync(fd: int) -> None:
            if self.armed and self._matches(_fd_path(fd)):
                self.hits += 1
                raise _enospc()
            real_fsync(fd)

        def replace(src: Any, dst: Any) -> None:
            if self.armed and where == "current_replace" and str(dst).endswith("/current"):
                self.hits += 1
                raise _enospc(str(src), None, str(dst))  # type: ignore[arg-type]
            real_replace(src, dst)

        def link(src: Any, dst: Any, **kwargs: Any) -> None:
            if self.armed and where == "link":
                self.hits += 1
                raise _enospc(str(src), None, str(dst))  # type: ignore[arg-type]
            real_link(src, dst, **kwargs)

        def data_write(file: Any, data: Any) -> int:
            if self.armed and where == "data_write":
                self.hits += 1
                view = memoryview(data)
                file.raw.write(view[: view.nbytes // 2])
                raise _enospc()
            return real_write(file, data)

        def open_(path: Any, *args: Any, **kwargs: Any) -> Any:
            file = builtins.open(path, *args, **kwargs)
            if self.armed and where == "manifest_write" and str(path).endswith(f"/{MANIFEST_NAME}"):
                self.hits += 1
                return _FullFile(file)
            return file

        self.where = where
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(staging._HashingFile, "write", data_write)
        monkeypatch.setattr(manifest_module, "open", open_, raising=False)

    def _matches(self, path: str) -> bool:
        return {"data_fsync": f"/{STAGING}/" in path,
                "folder_fsync": re.search(r"/(steps|episodes)/split=[a-z0-9_]+$", path) is not None,
                "manifest_fsync": path.endswith(f"/{MANIFEST_NAME}")}.get(self.where, False)


_VERSION = r"/\.versions/\d+/"
# where -> the path the error must name (a regular expression): the steps of a commit, in order
FULL_DISK = {
    "data_write": f"/{STAGING}/",
    "data_fsync": f"/{STAGING}/",
    "link": f"{_VERSION}(steps|episodes)/split=",  # a committed file linked into the new version folder
    "folder_fsync": f"{_VERSION}(steps|episodes)/split=",
    "manifest_write": f"{_VERSION}{MANIFEST_NAME}",
    "manifest_fsync": f"{_VERSION}{MANIFEST_NAME}",
    "current_replace": "/current'",  # the rename that commits
}


@pytest.mark.parametrize("where", FULL_DISK)
def test_a_full_disk_keeps_the_last_commit_and_says_why(pack: Path, monkeypatch: pytest.MonkeyPatch,
                                                        where: str) -> None:
    """ENOSPC at any step of a commit: the error names the cause and the file, the pack reads as its previous
    commit (validate: sound, nothing of the failed commit left), and once space is back a new writer appends."""
    names = FULL_DISK[where]
    before = (pack / MANIFEST_NAME).read_bytes()
    disk = DiskFull(monkeypatch, where)
    config, schema, _ = reference(PROFILE)
    with pytest.raises(OSError) as caught, PackWriter.open_append(pack, config, schema) as writer:
        for episode, steps in MORE:
            writer.add_episode(episode, steps)
        disk.armed = True
        writer.commit()
    disk.armed = False
    assert disk.hits >= 1 and caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert NO_SPACE in message and str(pack) in message and re.search(names, message), message
    assert (pack / MANIFEST_NAME).read_bytes() == before
    assert_bit_equal(read_back(pack), expected_steps(EPISODES, PROFILE))
    assert validate_pack(pack) == []
    assert leftovers(pack) == [] and not (pack / STAGING).exists()
    assert not (pack / LOCK_NAME).exists()
    with PackWriter.open_append(pack, config, schema) as writer:  # space is back
        for episode, steps in MORE:
            writer.add_episode(episode, steps)
    assert validate_pack(pack) == []
    assert_bit_equal(read_back(pack), expected_steps([*EPISODES, *MORE], PROFILE))


def test_a_writer_that_hit_a_full_disk_does_not_retry_with_half_written_files(
        pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After ENOSPC inside commit the staged files are incomplete (and their checksums cover bytes that
    never reached the disk): committing again on the same writer must be refused, not publish them."""
    disk = DiskFull(monkeypatch, "data_write")
    config, schema, _ = reference(PROFILE)
    writer = PackWriter.open_append(pack, config, schema)
    try:
        for episode, steps in MORE:
            writer.add_episode(episode, steps)
        disk.armed = True
        with pytest.raises(OSError, match=NO_SPACE):
            writer.commit()
        disk.armed = False
        with pytest.raises(PackError, match="this writer failed during a commit"):
            writer.commit()
    finally:
        writer.close()
    assert validate_pack(pack) == []
    assert_bit_equal(read_back(pack), expected_steps(EPISODES, PROFILE))


def test_a_full_disk_during_compaction_keeps_the_commit_before_it(pack: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """close() commits, then compacts; ENOSPC while compacting leaves the just-made commit intact."""
    disk = DiskFull(monkeypatch, "data_write")
    config, schema, _ = reference(PROFILE)
    writer = PackWriter.open_append(pack, config, schema)
    for episode, steps in MORE:
        writer.add_episode(episode, steps)
    writer.commit()
    disk.armed = True
    with pytest.raises(OSError, match=NO_SPACE):
        writer.close()
    disk.armed = False
    assert disk.hits >= 1 and not (pack / LOCK_NAME).exists()
    assert validate_pack(pack) == []
    assert len(read_manifest(pack).files) > 4  # not compacted
    assert_bit_equal(read_back(pack), expected_steps([*EPISODES, *MORE], PROFILE))
