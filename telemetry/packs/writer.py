"""PackWriter: episodes and their decision steps in, a crash-safe pack of large Parquet files out.

Rows are buffered per table and split and written as full row groups (ROW_GROUP_ROWS rows) into
staged files in `PACK/_staging/`, so a pack is a few large files that scan fast rather than one tiny
file or row group per episode. Every commit is a version folder `PACK/.versions/<commit>/` and
`PACK/current` links to the last one; `PACK/manifest.json`, `PACK/steps` and `PACK/episodes` lead
through `current` (see commit.py). `commit()` makes buffered rows durable:

1. finish the staged files (their sha256 is computed while the bytes are written, and each row group
   was sent on its way to disk as it was written: writeback.py) and fsync them;
2. (commit.py from here) build the next version folder: hard links to the files the commit keeps, then each staged file
   renamed into `<table>/split=<name>/`; fsync the folders;
3. write the manifest into the version folder and fsync it and the folders;
4. rename a new link to the folder over `current` and fsync the pack folder: this is the commit;
5. delete version folders but the new one and the one before it (`close()` keeps only the new one).

The manifest and the table folders a glob reads change together in step 4, so at every instant,
a crash at any instant included, the project's readers and plain tools globbing
`PACK/steps/**/*.parquet` read exactly the last commit; what an interrupted commit left is deleted
by the next writer. `close()` commits, then compacts small files (many commits of few rows) into
large ones through the same protocol: the new version links the large file instead of the small
ones, which go with the last version folder that links them. Quick stats are computed from each
written chunk in a background thread, never by rescanning.

    with PackWriter.create("runs/pack", config, schema, profiles=profile_feature_names(model, 10)) as w:
        w.add_episode({"episode_id": "ep-0001", "seed": 1, ...}, [tracker_row | decision, ...])
        w.commit()                                  # optional: a durable point mid-run
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry.config import TelemetryConfig
from telemetry.errors import PackError
from telemetry.feature_schema import FeatureSchema
from telemetry.packs import faults
from telemetry.packs.commit import (
    commit_version,
    create_links,
    inside,
    is_canonical,
    migrate,
    prune,
    publish,
    remove_uncommitted,
)
from telemetry.packs.current_link import repair_current
from telemetry.packs.identity import check_same, new_manifest
from telemetry.packs.lock import WriterLock
from telemetry.packs.manifest import TABLES, FileEntry, Manifest, Table, read_manifest
from telemetry.packs.parquet import ROW_GROUP_ROWS, parquet_options
from telemetry.packs.quick_stats import QuickStats, numeric_columns
from telemetry.packs.rows import check_episode_ids, check_steps, conform, from_rows, with_identity
from telemetry.packs.splits import assign_splits
from telemetry.packs.staging import STAGING, FileSink, StagedFile, TableStream

MAX_SMALL_FILES = 32  # a commit leaving more small files than this compacts them
PART_PREFIX = "part-"
_WORKERS = max(2, min(4, os.cpu_count() or 2))
LANES = _WORKERS  # staged files a steps stream encodes into at once (staging.TableStream)


class PackWriter:
    """The only way data gets into a pack. Not thread-safe; one writer per pack (a lock enforces it).

    Create with `PackWriter.create(path, config, feature_schema, ...)` or reopen with
    `PackWriter.open_append(path, config, feature_schema)`; use as a context manager: a clean exit
    closes (commit + compaction), an exception aborts (the pack stays at its last commit).

    Args (of `create`):
        path: an absent or empty folder.
        config: the resolved `TelemetryConfig` the rows were recorded with.
        feature_schema: the tracker's `FeatureSchema` (`tracker.schema`); fixes the steps table.
        profiles, provenance, actions, splits, pack_id: see `create`.

    Example:

        tracker = DiagnosticTracker(model, config, num_classes=10)
        with PackWriter.create("runs/pack", config, tracker.schema) as writer:
            writer.add_episode({"episode_id": "ep-0"}, [row_0, row_1, ...])  # rows from end_step()
            writer.commit()                                                   # optional durable point
    """

    def __init__(self, root: Path, manifest: Manifest, lock: WriterLock, known_ids: set[str]) -> None:
        self.path = root
        self._manifest = manifest
        self._lock = lock
        self._known_ids = known_ids
        self._schemas: dict[Table, pa.Schema] = {t: manifest.arrow_schema(t) for t in TABLES}
        self._options = {t: parquet_options(s) for t, s in self._schemas.items()}
        self._stat_columns = numeric_columns(self._schemas["steps"])
        self._actions = list(manifest.actions)
        self._next_index = manifest.quick_stats.episodes
        self._streams: dict[tuple[Table, str], TableStream] = {}
        self._pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="pack-writer")
        self._state = "open"
        (root / STAGING).mkdir(exist_ok=True)

    # ---- opening -----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        config: TelemetryConfig,
        feature_schema: FeatureSchema,
        *,
        provenance: Mapping[str, Any] | None = None,
        actions: Sequence[str] | None = None,
        splits: Mapping[str, float] | None = None,
        profiles: Mapping[str, Sequence[str]] | None = None,
        pack_id: str | None = None,
    ) -> PackWriter:
        """Start a new pack at `path` (absent or an empty directory) and commit it empty.

        `profiles` maps profile names to their feature names for this model (see
        `telemetry.profile_feature_names`); it is what lets `tensors(features="standard")` slice a
        larger pack exactly. `provenance` adds to the versions, host and command line recorded
        automatically (e.g. dataset, seeds, host_model). `actions` and `splits` fix the action
        vocabulary and the split fractions for the life of the pack.
        """
        root = Path(path)
        if root.is_symlink() and not root.exists():
            raise PackError(f"{root}: a symbolic link to {os.readlink(root)!r}, which does not exist; "
                            "expected an absent or empty directory")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise PackError(f"{root}: already exists and is not an empty directory; "
                            "use PackWriter.open_append to add to an existing pack")
        manifest = new_manifest(root, config, feature_schema, provenance, actions, splits, profiles,
                                     pack_id)
        root.mkdir(parents=True, exist_ok=True)
        lock = WriterLock.acquire(root)
        try:
            create_links(root)  # dangling until the first publish creates `current`
            publish(root, manifest)
        except BaseException:
            lock.release()
            raise
        return cls(root, manifest, lock, set())

    @classmethod
    def open_append(cls, path: str | os.PathLike[str], config: TelemetryConfig,
                    feature_schema: FeatureSchema) -> PackWriter:
        """Reopen a pack to add episodes; a config or feature schema unlike the pack's is refused.

        Leftovers of an interrupted writer (staged files, version folders never committed) are
        deleted; committed data is untouched. A pack of the earlier layout (real table folders), or
        a copy that followed the links, is converted to version folders first (commit.migrate); one
        whose `current` link was lost or broken leads to its last complete version again first.
        """
        root = Path(path)
        repair_current(root)
        check_same(root, read_manifest(root), config, feature_schema)
        lock = WriterLock.acquire(root)
        try:
            manifest = read_manifest(root)
            check_same(root, manifest, config, feature_schema)
            shutil.rmtree(root / STAGING, ignore_errors=True)
            remove_uncommitted(root)
            if not is_canonical(root, manifest):
                migrate(root, manifest, faults.checkpoint)
            prune(root)
            known = _committed_episode_ids(root, manifest)
        except BaseException:
            lock.release()
            raise
        return cls(root, manifest, lock, known)

    # ---- adding rows -------------------------------------------------------------------------
    def add_episode(self, episode: Mapping[str, Any],
                    steps: Sequence[Mapping[str, Any]] | pa.Table | pa.RecordBatch) -> str:
        """Buffer one episode and its steps; returns the split the episode falls in.

        `steps` is a list of row dicts (feature name or decision column -> value; `episode_id` and
        `step` may be left out: they default to the episode's id and the row's position) or an
        Arrow table of the same columns. Unknown columns, wrong types, actions outside the pack's
        vocabulary and duplicate ids are refused before anything is buffered.
        """
        self._check_open()
        if not isinstance(episode, Mapping):
            raise PackError("add_episode: episode must be a mapping of episode columns, "
                            f"got {type(episode).__name__}")
        episode_id = episode.get("episode_id")
        if not isinstance(episode_id, str) or not episode_id:
            raise PackError(f"add_episode: episode_id is {episode_id!r}; expected a non-empty string")
        what = f"episode {episode_id!r}"
        episodes = self._episode_rows([episode], what)
        if isinstance(steps, pa.Table | pa.RecordBatch):
            if isinstance(steps, pa.RecordBatch):
                steps = pa.Table.from_batches([steps])
            table = with_identity(steps, episode_id)
            table = conform(table, self._schemas["steps"], f"{what} steps")
        else:
            table = self._step_rows(steps, episode_id, what)
        return self._add(episodes, table)[0]

    def add_episodes(self, episodes: Sequence[Mapping[str, Any]] | pa.Table,
                     steps: pa.Table | pa.RecordBatch) -> list[str]:
        """Buffer many episodes at once from columnar data (the fast path for bulk conversion).

        `steps` must carry `episode_id` and `step`; every step must belong to one of `episodes`.
        Returns the split of each episode, in order.
        """
        self._check_open()
        if isinstance(episodes, pa.Table):
            ep_table = conform(episodes, self._schemas["episodes"], "episodes")
        else:
            ep_table = self._episode_rows(list(episodes), "episodes")
        if isinstance(steps, pa.RecordBatch):
            steps = pa.Table.from_batches([steps])
        if not isinstance(steps, pa.Table):
            raise PackError(f"add_episodes: steps must be an Arrow table, got {type(steps).__name__}")
        for required in ("episode_id", "step"):
            if required not in steps.column_names:
                raise PackError(f"add_episodes: steps has no {required!r} column")
        return self._add(ep_table, conform(steps, self._schemas["steps"], "steps"))

    def _episode_rows(self, rows: list[Mapping[str, Any]], what: str) -> pa.Table:
        return from_rows(rows, self._schemas["episodes"], what)

    def _step_rows(self, rows: Sequence[Mapping[str, Any]], episode_id: str, what: str) -> pa.Table:
        filled = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise PackError(f"{what}: step row {i} is a {type(row).__name__}; expected a mapping")
            if row.get("episode_id", episode_id) != episode_id:
                raise PackError(f"{what}: step row {i} has episode_id {row['episode_id']!r}")
            filled.append({"step": i, **row, "episode_id": episode_id})
        return from_rows(filled, self._schemas["steps"], f"{what} steps")

    def _add(self, episodes: pa.Table, steps: pa.Table) -> list[str]:
        """Validate everything, then route rows to their split's streams (nothing changes on error)."""
        ids = episodes.column("episode_id").to_pylist()
        check_episode_ids(ids, self._known_ids, self.path)
        check_steps(steps, episodes, self._actions)
        splits = assign_splits(ids, self._manifest.splits)
        episodes = self._fill_episode_index(episodes)
        names = list(self._manifest.splits)
        codes = np.array([names.index(s) for s in splits], dtype=np.int64)
        step_codes = codes[pc.index_in(steps.column("episode_id"), value_set=episodes.column("episode_id"))
                           .to_numpy(zero_copy_only=False)] if steps.num_rows else codes[:0]
        for code in np.unique(codes):
            self._stream("episodes", names[code]).append(episodes, codes == code)
        for start in range(0, steps.num_rows, ROW_GROUP_ROWS):  # slices: routing overlaps encoding
            chunk, chunk_codes = steps.slice(start, ROW_GROUP_ROWS), step_codes[start:start + ROW_GROUP_ROWS]
            for code in np.unique(chunk_codes):
                self._stream("steps", names[code]).append(chunk, chunk_codes == code)
        self._known_ids.update(ids)
        self._next_index += len(ids)
        return splits

    def _fill_episode_index(self, episodes: pa.Table) -> pa.Table:
        """Missing episode_index values continue the pack's numbering, in the order given."""
        column = episodes.column("episode_index").combine_chunks()
        if column.null_count == 0:
            return episodes
        fallback = pa.array(np.arange(self._next_index, self._next_index + episodes.num_rows, dtype=np.int64))
        filled = pc.if_else(pc.is_null(column), fallback, column)
        return episodes.set_column(episodes.schema.get_field_index("episode_index"),
                                   episodes.schema.field("episode_index"), filled)

    def _stream(self, table: Table, split: str) -> TableStream:
        key = (table, split)
        if key not in self._streams:
            stats = self._steps_stats if table == "steps" else QuickStats.of_episodes
            self._streams[key] = TableStream(self._pool, partial(self._new_sink, table), table, split, stats,
                                             lanes=LANES if table == "steps" else 1)
        return self._streams[key]

    def _steps_stats(self, table: pa.Table) -> QuickStats:
        return QuickStats.of_steps(table, self._stat_columns)

    def _new_sink(self, table: Table) -> FileSink:
        path = self.path / STAGING / f"{table}-{uuid.uuid4().hex}.parquet"
        return FileSink(path, self._schemas[table], self._options[table])

    # ---- committing --------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        """The last committed manifest (buffered rows are not in it)."""
        return self._manifest

    @property
    def episode_ids(self) -> frozenset[str]:
        """Ids of every episode in the pack: committed, and added since the last commit."""
        return frozenset(self._known_ids)

    @property
    def pending_rows(self) -> int:
        """Steps added since the last commit (buffered or already in staged files)."""
        return sum(s.uncommitted_rows for (t, _), s in self._streams.items() if t == "steps")

    def commit(self) -> Manifest:
        """Make every row added so far durable and visible; a no-op when nothing was added."""
        self._check_open()
        staged: list[StagedFile] = []
        split_stats = dict(self._manifest.split_stats)
        self._state = "failed"  # until every stream is finished: a half-written staged file is never retried
        for stream in self._streams.values():  # every split's last row groups encode at once
            stream.seal()
        for (_, split), stream in self._streams.items():
            files, stats = stream.finish()
            staged += files
            split_stats[split] = split_stats.get(split, QuickStats()).merge(stats)
        self._streams.clear()
        self._state = "open"
        if not staged:
            return self._manifest
        placed = [(f, self._entry_for(f)) for f in staged]
        self._publish(placed, self._manifest.files + [e for _, e in placed], split_stats)
        if self._small_files(MAX_SMALL_FILES + 1):
            self.compact()
        return self._manifest

    def compact(self) -> Manifest:
        """Rewrite each (table, split)'s small files (under one row group) as one large file."""
        self._check_open()
        self.commit()
        plans = self._small_files(2)
        if not plans:
            return self._manifest
        files = list(self._manifest.files)
        placed: list[tuple[StagedFile, FileEntry]] = []
        for (table, split), small in plans.items():
            stream = TableStream(self._pool, partial(self._new_sink, table), table, split, None)
            for entry in small:
                stream.append(_read_verified(self.path, entry, self._schemas[table]))
            new = [(f, self._entry_for(f)) for f in stream.finish()[0]]
            at = files.index(small[0])
            files[at:at + 1] = [e for _, e in new]
            files = [f for f in files if f not in small[1:]]
            placed += new
        self._publish(placed, files, dict(self._manifest.split_stats))
        return self._manifest

    def _small_files(self, at_least: int) -> dict[tuple[Table, str], list[FileEntry]]:
        groups: dict[tuple[Table, str], list[FileEntry]] = {}
        for f in self._manifest.files:
            if f.rows < ROW_GROUP_ROWS:
                groups.setdefault((f.table, f.split), []).append(f)
        return {k: v for k, v in groups.items() if len(v) >= at_least}

    def _entry_for(self, staged: StagedFile) -> FileEntry:
        name = f"{PART_PREFIX}{self._manifest.commit + 1:06d}-{uuid.uuid4().hex[:12]}.parquet"
        return FileEntry(path=f"{staged.table}/split={staged.split}/{name}", table=staged.table,
                         split=staged.split, rows=staged.rows, bytes=staged.size, sha256=staged.sha256)

    def _publish(self, placed: list[tuple[StagedFile, FileEntry]], files: list[FileEntry],
                 split_stats: dict[str, QuickStats]) -> None:
        """Steps 2-5 of the protocol; a failure disables the writer (the pack stays at its last commit)."""
        self._state = "failed"
        manifest = self._manifest.with_commit(files, split_stats, datetime.now(timezone.utc))
        commit_version(self.path, self._manifest, manifest, [(f.staged, e) for f, e in placed])
        self._manifest = manifest
        prune(self.path, faults.checkpoint)
        self._state = "open"

    # ---- closing -----------------------------------------------------------------------------
    def close(self, compact: bool = True) -> Manifest:
        """Commit, compact, keep only the last version folder, release the lock. Safe to call twice."""
        if self._state == "closed":
            return self._manifest
        try:
            if self._state == "open":
                self.commit()
                if compact:
                    self.compact()
                prune(self.path, faults.checkpoint, keep_previous=False)  # a closed pack is one version folder
        finally:
            self._shutdown()
        return self._manifest

    def abort(self) -> None:
        """Drop everything added since the last commit and release the lock."""
        if self._state == "closed":
            return
        for stream in self._streams.values():
            stream.discard()
        self._streams.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.path / STAGING, ignore_errors=True)
        try:  # what a failed commit left (the next writer would delete it too)
            remove_uncommitted(self.path)
        except OSError:
            pass
        self._lock.release()
        self._state = "closed"

    def _check_open(self) -> None:
        if self._state == "failed":
            raise PackError(f"{self.path}: this writer failed during a commit; the pack is at its last "
                            "commit, reopen it with PackWriter.open_append")
        if self._state == "closed":
            raise PackError(f"{self.path}: this writer is closed; "
                            "reopen the pack with PackWriter.open_append")

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()



def _committed_episode_ids(root: Path, manifest: Manifest) -> set[str]:
    ids: set[str] = set()
    for entry in manifest.files_of("episodes"):
        try:
            ids.update(pq.read_table(root / entry.path, columns=["episode_id"]).column(0).to_pylist())
        except (OSError, pa.ArrowException, ValueError) as exc:  # a damaged footer can fail to decode
            raise PackError(f"{root / entry.path}: cannot read committed episode ids "
                            f"({str(exc).splitlines()[0]}); run `esper validate {root}`") from None
    return ids


def _read_verified(root: Path, entry: FileEntry, schema: pa.Schema) -> pa.Table:
    """A committed file's rows, after checking its size and checksum (compaction must not launder damage)."""
    path = root / entry.path
    if path.exists() and not inside(root, path):
        raise PackError(f"{path}: leads outside the pack (through a symbolic link); run `esper validate {root}`")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackError(f"{path}: listed in manifest.json but missing") from None
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise PackError(f"{path}: size or sha256 does not match manifest.json (damaged)")
    return pq.read_table(pa.BufferReader(data), schema=schema)
