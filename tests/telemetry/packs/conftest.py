import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support.packs import FAULT_EPISODES, FAULT_PROFILE, FAULT_SPLITS, described_episodes, write_pack

from telemetry.packs import staging
from telemetry.packs import writer as writer_module
from telemetry.packs.manifest import read_manifest


@pytest.fixture
def row_groups(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Shrink row groups (and files) so a few rows exercise the writer's batching and roll-over."""

    def shrink(rows: int, file_rows: int | None = None) -> None:
        for module in (staging, writer_module):
            monkeypatch.setattr(module, "ROW_GROUP_ROWS", rows)
        if file_rows is not None:
            monkeypatch.setattr(staging, "MAX_FILE_ROWS", file_rows)

    return shrink


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small committed pack (minimal profile, two splits, several files per split), never modified."""
    path = tmp_path_factory.mktemp("reliability") / "pack"
    write_pack(path, FAULT_EPISODES, commit_every=2, profile=FAULT_PROFILE,
               splits=FAULT_SPLITS)
    manifest = read_manifest(path)
    assert {(f.table, f.split) for f in manifest.files} == {(t, s) for t in ("steps", "episodes")
                                                             for s in FAULT_SPLITS}
    return path


@pytest.fixture
def pack(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pristine pack, for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "pack", symlinks=True))


@pytest.fixture(scope="session")
def described_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diagnostic pack with all three default splits, causes, rollouts and seeds, never modified."""
    path = tmp_path_factory.mktemp("described") / "pack"
    write_pack(path, described_episodes(), commit_every=10)
    return path
