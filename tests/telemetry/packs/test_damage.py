"""Damage to a pack on disk: truncated, bit-flipped, missing and extra data files and hand-edited
manifests are caught by `esper validate` and by every reader (Arrow, polars, DuckDB views, tensors)
with one line naming the file; nothing reads damaged data as good. `verify=False` skips only the
sha256 pass: it still catches missing, truncated and resized files, edited row counts and removed
entries, but not a same-size change of a file's bytes. Paths that leave the pack are refused when
the manifest is read.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from support.packs import (
    FAULT_EPISODES,
    FAULT_MORE,
    FAULT_PROFILE,
    FAULT_SPLITS,
    assert_bit_equal,
    expected_steps,
    read_back,
    run_cli,
)

from telemetry.errors import PackError
from telemetry.packs import reader as pack_reader
from telemetry.packs import validate as pack_validate
from telemetry.packs.manifest import MANIFEST_NAME, FileEntry, read_manifest
from telemetry.packs.reader import Pack, open_pack
from telemetry.packs.validate import validate_pack

PROFILE, SPLITS, EPISODES, MORE = FAULT_PROFILE, FAULT_SPLITS, FAULT_EPISODES, FAULT_MORE
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


# ---- kinds of damage -----------------------------------------------------------------------------

def _truncate(pack: Path, entry: FileEntry, tmp: Path) -> None:
    path = pack / entry.path
    path.write_bytes(path.read_bytes()[:-17])


def _flip_a_bit(pack: Path, entry: FileEntry, tmp: Path) -> None:
    """Inside the first data page (not the footer): size and footer stay as they were."""
    path = pack / entry.path
    data = bytearray(path.read_bytes())
    data[pq.read_metadata(path).row_group(0).column(0).data_page_offset + 2] ^= 0x04
    path.write_bytes(bytes(data))


def _delete(pack: Path, entry: FileEntry, tmp: Path) -> None:
    (pack / entry.path).unlink()


def _edit_manifest(pack: Path, entry: FileEntry,
                   change: Callable[[dict[str, Any], list[dict[str, Any]]], None]) -> None:
    """Edit manifest.json by hand (as JSON, not through the model); `change(entry's JSON, files)`."""
    data = json.loads((pack / MANIFEST_NAME).read_text())
    change(next(f for f in data["files"] if f["path"] == entry.path), data["files"])
    (pack / MANIFEST_NAME).write_text(json.dumps(data, indent=1))


def _edit(**changes: Callable[[Any], Any]) -> Callable[[Path, FileEntry, Path], None]:
    def apply(pack: Path, entry: FileEntry, tmp: Path) -> None:
        _edit_manifest(pack, entry, lambda e, files: e.update({k: f(e[k]) for k, f in changes.items()}))
    return apply


def _drop_entry(pack: Path, entry: FileEntry, tmp: Path) -> None:
    """The entry goes, the file stays: an unlisted extra whose rows the quick stats still count."""
    _edit_manifest(pack, entry, lambda e, files: files.remove(e))


def _escape(outside: Callable[[Path, Path], Path], spelled: Callable[[Path, Path], str]
            ) -> Callable[[Path, FileEntry, Path], None]:
    """Point the entry outside the pack at a byte-identical copy: only the path check can stop a reader."""
    def apply(pack: Path, entry: FileEntry, tmp: Path) -> None:
        target = outside(pack, tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pack / entry.path, target)
        _edit_manifest(pack, entry, lambda e, files: e.update(path=spelled(pack, tmp)))
    return apply


def _tear_manifest(pack: Path, entry: FileEntry, tmp: Path) -> None:
    text = (pack / MANIFEST_NAME).read_text()
    (pack / MANIFEST_NAME).write_text(text[: len(text) // 2])


def _add_extra(pack: Path, entry: FileEntry, tmp: Path) -> None:
    """An unlisted copy of a listed file, and unlisted garbage, where plain Parquet readers would look."""
    source = pack / entry.path
    stray, garbage = _EXTRA_NAMES
    shutil.copy(source, source.with_name(stray))
    source.with_name(garbage).write_bytes(b"not parquet at all")


_EXTRA_NAMES = ("part-999999-stray.parquet", "part-999998-garbage.parquet")


@dataclass(frozen=True)
class Damage:
    name: str
    apply: Callable[[Path, FileEntry, Path], None]
    readers_say: str  # in the PackError of every reader
    validate_says: str  # in a line of `esper validate` (stdout, exit 1; stderr, exit 2 if the manifest is refused)
    readers_name_file: bool = True  # else they name manifest.json
    without_verify: bool = True  # also caught by open_pack(verify=False)
    manifest_refused: bool = False  # read_manifest itself refuses: exit 2 everywhere


_ESCAPES = "is not a plain relative path inside the pack"
DAMAGES = [
    Damage("truncated", _truncate, "bytes but manifest.json says", "bytes but manifest.json says"),
    Damage("bit_flip", _flip_a_bit, "sha256 does not match", "sha256 does not match", without_verify=False),
    Damage("missing", _delete, "listed in manifest.json but missing", "listed in manifest.json but missing"),
    Damage("edited_rows", _edit(rows=lambda n: n + 1), "rows but manifest.json says", "rows but manifest.json says"),
    Damage("edited_sha256", _edit(sha256=lambda s: s[::-1]), "sha256 does not match", "sha256 does not match",
           without_verify=False),  # the file itself is intact: verify=False reads good data
    Damage("edited_bytes", _edit(bytes=lambda n: n - 1), "bytes but manifest.json says",
           "bytes but manifest.json says"),
    Damage("entry_removed", _drop_entry, "quick stats count", "not listed in manifest.json",
           readers_name_file=False),
    Damage("escape_dotdot", _escape(lambda p, t: p.parent / "outside.parquet", lambda p, t: "../outside.parquet"),
           _ESCAPES, _ESCAPES, readers_name_file=False, manifest_refused=True),
    Damage("escape_absolute", _escape(lambda p, t: t / "elsewhere" / "x.parquet",
                                      lambda p, t: str(t / "elsewhere" / "x.parquet")),
           _ESCAPES, _ESCAPES, readers_name_file=False, manifest_refused=True),
    Damage("escape_inner_dotdot", _escape(lambda p, t: p.parent / "inner.parquet",
                                          lambda p, t: "steps/split=train/../../../inner.parquet"),
           _ESCAPES, _ESCAPES, readers_name_file=False, manifest_refused=True),
    Damage("manifest_torn", _tear_manifest, "not valid JSON", "not valid JSON", readers_name_file=False,
           manifest_refused=True),
]
EXTRA = Damage("extra_files", _add_extra, "", "not listed in manifest.json")

READERS: dict[str, tuple[str, Callable[[Pack], Any]]] = {  # name -> (table it reads, the read)
    "steps": ("steps", lambda p: p.steps()),
    "episodes": ("episodes", lambda p: p.episodes()),
    "lazy_steps": ("steps", lambda p: p.lazy("steps").collect()),
    "lazy_episodes": ("episodes", lambda p: p.lazy("episodes").collect()),
    "duckdb_steps": ("steps", lambda p: p.duckdb().sql("SELECT count(*) FROM steps").fetchall()),
    "duckdb_episodes": ("episodes", lambda p: p.duckdb().sql("SELECT count(*) FROM episodes").fetchall()),
    "tensors": ("steps", lambda p: p.tensors()),
}


def _damage(pack: Path, tmp: Path, damage: Damage, table: str = "steps") -> FileEntry:
    entry = read_manifest(pack).files_of(table)[0]  # type: ignore[arg-type]
    damage.apply(pack, entry, tmp)
    return entry


def _assert_names(message: str, pack: Path, entry: FileEntry, damage: Damage, says: str) -> None:
    assert "\n" not in message, message
    assert says in message, message
    if damage.readers_name_file:
        assert str(pack / entry.path) in message, message
    else:
        assert str(pack / MANIFEST_NAME) in message, message


# ---- every reader x every damage -----------------------------------------------------------------

@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.name)
def test_every_reader_refuses_damage_and_names_the_file(pack: Path, tmp_path: Path, damage: Damage,
                                                        reader: str) -> None:
    """verify=True (the default): no kind of damage is ever read as data, and the error says where."""
    table, read = READERS[reader]
    entry = _damage(pack, tmp_path, damage, table)
    with pytest.raises(PackError) as caught:
        read(open_pack(pack))
    _assert_names(str(caught.value), pack, entry, damage, damage.readers_say)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("damage", [d for d in DAMAGES if d.without_verify], ids=lambda d: d.name)
def test_without_verify_every_reader_still_refuses_what_sizes_and_counts_show(
        pack: Path, tmp_path: Path, damage: Damage, reader: str) -> None:
    """verify=False promises: files present, of their size, with their row counts, inside the pack."""
    table, read = READERS[reader]
    entry = _damage(pack, tmp_path, damage, table)
    with pytest.raises(PackError) as caught:
        read(open_pack(pack, verify=False))
    _assert_names(str(caught.value), pack, entry, damage, damage.readers_say)


def test_without_verify_a_same_size_change_is_left_to_verify_and_validate(pack: Path, tmp_path: Path) -> None:
    """The documented limit of verify=False: a flipped bit keeps size and footer, so only sha256 sees it."""
    entry = _damage(pack, tmp_path, Damage("bit_flip", _flip_a_bit, "", ""))
    assert open_pack(pack, verify=False).files("steps")  # passes the size and row-count checks
    with pytest.raises(PackError, match="sha256 does not match"):
        open_pack(pack).files("steps")
    assert any(str(pack / entry.path) in p and "sha256" in p for p in validate_pack(pack))


@pytest.mark.parametrize("reader", READERS)
def test_extra_files_are_never_read(pack: Path, pristine: Path, tmp_path: Path, reader: str) -> None:
    """A stray copy of a listed file and unlisted garbage change no reader's result (validate reports them)."""
    table, read = READERS[reader]
    _damage(pack, tmp_path, EXTRA, table)
    assert _shape(read(open_pack(pack))) == _shape(read(open_pack(pristine)))
    if reader == "steps":
        assert_bit_equal(read_back(pack), expected_steps(EPISODES, PROFILE))


def _shape(result: Any) -> tuple[int, ...]:
    """Row count (and width) of any reader's result; a stray file read would add rows."""
    if isinstance(result, list):  # DuckDB count(*)
        return (result[0][0],)
    if hasattr(result, "features"):
        return tuple(result.features.shape)
    return tuple(result.shape)


def test_an_unreadable_file_is_a_clean_error(pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES/EIO while checksumming (simulated: tests may run as root) is one line, not a traceback."""
    entry = read_manifest(pack).files_of("steps")[0]

    def denied(path: Path, chunk: int = 1 << 22) -> str:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(pack_reader, "file_sha256", denied)
    monkeypatch.setattr(pack_validate, "file_sha256", denied)
    with pytest.raises(PackError, match=re.escape(f"{pack / entry.path}: cannot read (Permission denied)")):
        open_pack(pack).steps()
    assert f"{pack / entry.path}: cannot read (Permission denied)" in validate_pack(pack)


# ---- the CLI on damaged packs --------------------------------------------------------------------

@pytest.mark.parametrize("damage", [*DAMAGES, EXTRA], ids=lambda d: d.name)
def test_cli_reports_damage_in_one_line_with_the_documented_status(pack: Path, tmp_path: Path, damage: Damage,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """validate: exit 1, a line per problem naming the file; exit 2 and one stderr line if the manifest is
    refused. query: exit 2 and one stderr line naming the file. inspect shows the manifest (data unread)."""
    entry = _damage(pack, tmp_path, damage)
    file = str(pack / entry.path)
    code, out, err = run_cli(capsys, "validate", str(pack))
    if damage.manifest_refused:
        assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith("esper: error: ")
        assert str(pack / MANIFEST_NAME) in err and damage.validate_says in err
    else:
        assert code == 1 and err == ""
        named = [str(Path(file).with_name(n)) for n in _EXTRA_NAMES] if damage is EXTRA else [file]
        for name in named:
            assert any(name in line and damage.validate_says in line for line in out.splitlines()), out
    code, out, err = run_cli(capsys, "query", str(pack), "SELECT count(*) AS n FROM steps", "--format", "csv")
    if damage is EXTRA:
        assert (code, out, err) == (0, f"n\n{read_manifest(pack).quick_stats.steps}\n", "")
    else:
        assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith("esper: error: ")
        assert (file if damage.readers_name_file else str(pack / MANIFEST_NAME)) in err, err
    code, out, err = run_cli(capsys, "inspect", str(pack))
    if damage.manifest_refused:
        assert (code, out) == (2, "") and err.count("\n") == 1 and str(pack / MANIFEST_NAME) in err
    else:
        assert code == 0 and err == ""
    assert "Traceback" not in err


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["split_stats"]["train"]["columns"]["val_loss"].update(mean=123.0),
     "split_stats.train: val_loss mean is 123.0, but the files give"),
    (lambda d: d["split_stats"]["train"]["columns"]["val_loss"].update(m2=0.0),
     "split_stats.train: val_loss std is 0.0, but the files give"),
    (lambda d: d["split_stats"]["test"].update(action_distribution={"WAIT": 1}),
     "split_stats.test: action_distribution is {'WAIT': 1}, but the files give"),
    (lambda d: d["quick_stats"]["columns"]["train_loss"].update(mean=-1.0),
     "quick_stats: train_loss mean is -1.0, but the split_stats merged give"),
])
def test_validate_recomputes_quick_stats_so_a_hand_edit_cannot_pass(pack: Path, edit: Callable[[dict], Any],
                                                                    says: str) -> None:
    """Quick stats standardise every tensor and policy: validate checks them against the files."""
    assert validate_pack(pack) == []
    data = json.loads((pack / MANIFEST_NAME).read_text())
    edit(data)
    (pack / MANIFEST_NAME).write_text(json.dumps(data))
    problems = validate_pack(pack)
    assert problems and problems[0].startswith(f"manifest.json: {says}"), problems
    assert all(p.endswith("(edited by hand?)") for p in problems)  # a split's edit also unbalances the total


def test_a_quick_stat_dropped_by_hand_is_refused_when_the_manifest_is_read(pack: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """Found by the long fuzz run: a column's mean dropped from split_stats made validate (and the next
    commit) fail merging None into a float, a traceback; the manifest itself is refused now."""
    data = json.loads((pack / MANIFEST_NAME).read_text())
    data["split_stats"]["train"]["columns"]["val_loss"].pop("mean")
    (pack / MANIFEST_NAME).write_text(json.dumps(data))
    for command in ("validate", "inspect", "query"):
        code, _, err = run_cli(capsys, command, str(pack), *(["SELECT 1"] if command == "query" else []))
        assert code == 2 and err.count("\n") == 1, err
        assert "split_stats.train.columns.val_loss" in err and "finite values but no min, max or mean" in err


def test_with_several_damaged_files_the_first_in_commit_order_is_named(pack: Path, tmp_path: Path) -> None:
    """Files are hashed side by side; which one finishes first must not decide which one is reported."""
    entries = read_manifest(pack).files_of("steps")
    assert len(entries) >= 2
    for entry in (entries[0], entries[-1]):
        _flip_a_bit(pack, entry, tmp_path)
    for _ in range(5):
        with pytest.raises(PackError, match="sha256 does not match") as caught:
            open_pack(pack).tensors()
        assert str(pack / entries[0].path) in str(caught.value)
        assert str(pack / entries[-1].path) not in str(caught.value)
