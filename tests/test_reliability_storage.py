"""Reliability of packs on disk.

Damage: truncated, bit-flipped, missing and extra data files and hand-edited manifests are caught by
`esper validate` and by every reader (Arrow, polars, DuckDB views, tensors) with one line naming the
file; nothing reads damaged data as good. `verify=False` skips only the sha256 pass: it still catches
missing, truncated and resized files, edited row counts and removed entries, but not a same-size
change of a file's bytes. Paths that leave the pack are refused when the manifest is read.
Concurrency: one writer per pack across processes, a SIGKILLed writer's lock is taken over, and
readers during writing see whole commits only. Resources: a full disk (ENOSPC injected at each
step of a commit) names the cause and the file, keeps the previous commit and leaves nothing of the
failed one, and a later writer appends.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from pack_helpers import assert_bit_equal, expected_steps, make_episodes, read_back, reference, write_pack

from telemetry import manifest as manifest_module
from telemetry import pack_reader, pack_validate, pack_writer
from telemetry.cli import main
from telemetry.errors import PackError
from telemetry.manifest import MANIFEST_NAME, FileEntry, read_manifest
from telemetry.pack_lock import LOCK_NAME
from telemetry.pack_reader import Pack, open_pack
from telemetry.pack_validate import leftovers, validate_pack
from telemetry.pack_writer import STAGING, PackWriter

PROFILE = "minimal"  # 27 features: the failure paths are the same as for wide packs, and faster
SPLITS = {"train": 0.5, "test": 0.5}
EPISODES = make_episodes(0, 6, steps=4, profile=PROFILE)
MORE = make_episodes(6, 3, steps=4, profile=PROFILE)
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reliability") / "pack"
    write_pack(path, EPISODES, commit_every=2, profile=PROFILE, splits=SPLITS)
    manifest = read_manifest(path)
    assert {(f.table, f.split) for f in manifest.files} == {(t, s) for t in ("steps", "episodes") for s in SPLITS}
    return path


@pytest.fixture
def pack(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "pack"))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


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


# ---- concurrency ---------------------------------------------------------------------------------

def _steps_of(index: int) -> int:
    return 2 + index % 3


WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from pack_helpers import make_episodes, reference
from telemetry import pack_writer
pack_writer.MAX_SMALL_FILES = 4  # compactions (which delete superseded files) while readers read
path, commits, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config, schema, _ = reference({profile!r})
with pack_writer.PackWriter.create(path, config, schema, splits={splits!r}) as writer:
    for c in range(commits):
        for i in range(c * per, (c + 1) * per):
            writer.add_episode(*make_episodes(i, 1, steps=2 + i % 3, profile={profile!r})[0])
        writer.commit()
        time.sleep(0.03)
"""


def _whole_commits(path: Path, per_commit: int) -> int:
    """One reader's view: whole commits, every episode with all its steps, counts and checksums agreeing."""
    pack = open_pack(path)  # verify=True: every file read is checksummed first
    stats = pack.manifest.quick_stats
    episodes = pack.episodes(columns=["episode_id", "split"]).to_pydict()
    steps = pack.steps(columns=["episode_id", "step", "split"]).to_pydict()
    n = len(episodes["episode_id"])
    assert (n, len(steps["step"])) == (stats.episodes, stats.steps)
    assert n % per_commit == 0, f"a partial commit: {n} episodes"
    assert sorted(episodes["episode_id"]) == [f"ep-{i:04d}" for i in range(n)]
    split = dict(zip(episodes["episode_id"], episodes["split"], strict=True))
    seen: dict[str, list[int]] = {}
    for episode_id, step, step_split in zip(*steps.values(), strict=True):
        assert split[episode_id] == step_split
        seen.setdefault(episode_id, []).append(step)
    assert {e: sorted(s) for e, s in seen.items()} == {f"ep-{i:04d}": list(range(_steps_of(i))) for i in range(n)}
    assert pack.tensors().features.shape[0] == stats.steps
    assert pack.duckdb().sql("SELECT count(*) FROM steps").fetchall() == [(stats.steps,)]
    return pack.manifest.commit


def test_readers_during_writing_see_whole_commits_only(tmp_path: Path) -> None:
    """A writer process commits in a loop (compacting as it goes) while this process keeps reading: every
    read is one complete commit, or a clean error naming a file a compaction has just superseded."""
    path, commits, per = tmp_path / "p", 24, 3
    script = WRITER.format(tests=str(TESTS), profile=PROFILE, splits=SPLITS)
    writer = subprocess.Popen([sys.executable, "-c", script, str(path), str(commits), str(per)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (path / MANIFEST_NAME).exists() and writer.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    observed: list[int] = []
    errors: list[str] = []
    while writer.poll() is None:
        assert time.monotonic() < deadline, "the writer did not finish"
        try:
            observed.append(_whole_commits(path, per))
        except (PackError, duckdb.IOException) as exc:  # a file deleted by compaction after the check
            errors.append(str(exc))
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    final = _whole_commits(path, per)
    assert read_manifest(path).quick_stats.episodes == commits * per
    assert len(set(observed)) >= 3, f"too few commits observed while writing: {observed}"
    assert observed == sorted(observed) and observed[-1] <= final
    assert all(str(path) in e and ("missing" in e or "No files found" in e or "No such file" in e)
               for e in errors), errors
    assert validate_pack(path) == []


def test_a_second_writer_process_is_refused(tmp_path: Path) -> None:
    """The lock is a flock, so another process is refused too, and told who holds the pack."""
    config, schema, _ = reference(PROFILE)
    script = ("import sys; from pathlib import Path; from telemetry.pack_lock import WriterLock; "
              "WriterLock.acquire(Path(sys.argv[1]))")
    with PackWriter.create(tmp_path / "p", config, schema) as writer:
        writer.add_episode(*EPISODES[0])
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p")], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert f"another writer holds the pack (pid {os.getpid()} on " in result.stderr
    assert_bit_equal(read_back(tmp_path / "p"), expected_steps(EPISODES[:1], PROFILE))


HOLDER = """
import sys, time
sys.path.insert(0, {tests!r})
from pack_helpers import make_episodes, reference
from telemetry import pack_writer
pack_writer.ROW_GROUP_ROWS = 4  # rows reach staged files before any commit
config, schema, _ = reference({profile!r})
writer = pack_writer.PackWriter.open_append(sys.argv[1], config, schema)
for episode, steps in make_episodes(6, 2, steps=4, profile={profile!r}):
    writer.add_episode(episode, steps)
writer.commit()
for episode, steps in make_episodes(8, 3, steps=4, profile={profile!r}):
    writer.add_episode(episode, steps)
for stream in writer._streams.values():
    for write in stream._writes:
        write.result()
print("READY", flush=True)
time.sleep(600)
"""


def _wait_for(process: subprocess.Popen[str], line: str, timeout: float) -> None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no {line!r} from the child within {timeout} s"
    assert process.stdout.readline().strip() == line


def test_a_sigkilled_writer_leaves_its_commits_and_a_stale_lock_that_is_taken_over(pristine: Path,
                                                                                    tmp_path: Path) -> None:
    """While the child writes, this process is refused (naming the child) but reads its commit; after
    SIGKILL the flock is gone, so a new writer takes over the stale lock file and drops the staged rows."""
    path = Path(shutil.copytree(pristine, tmp_path / "p"))
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(tests=str(TESTS), profile=PROFILE), str(path)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for(child, "READY", 180)
        config, schema, _ = reference(PROFILE)
        with pytest.raises(PackError, match=rf"another writer holds the pack \(pid {child.pid} on "):
            PackWriter.open_append(path, config, schema)
        committed = [*EPISODES, *make_episodes(6, 2, steps=4, profile=PROFILE)]
        assert_bit_equal(read_back(path), expected_steps(committed, PROFILE))
        assert any((path / STAGING).iterdir()), "the child should have uncommitted rows in staged files"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert json.loads((path / LOCK_NAME).read_text())["pid"] == child.pid  # left behind, no longer held
    with PackWriter.open_append(path, config, schema) as writer:
        assert not any((path / STAGING).iterdir())
        for episode, steps in make_episodes(8, 3, steps=4, profile=PROFILE):
            writer.add_episode(episode, steps)  # the killed writer's uncommitted ids are free again
    assert validate_pack(path) == []
    assert_bit_equal(read_back(path), expected_steps([*committed, *make_episodes(8, 3, steps=4, profile=PROFILE)],
                                                     PROFILE))
    assert not (path / LOCK_NAME).exists()


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
        real_fsync, real_replace, real_link, real_write = os.fsync, os.replace, os.link, pack_writer._HashingFile.write

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
        monkeypatch.setattr(pack_writer._HashingFile, "write", data_write)
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
