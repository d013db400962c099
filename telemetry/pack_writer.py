"""PackWriter: episodes and their decision steps in, a crash-safe pack of large Parquet files out.

Rows are buffered per table and split and written as full row groups (ROW_GROUP_ROWS rows) into
staged files in `PACK/_staging/`, so a pack is a few large files that scan fast rather than one tiny
file or row group per episode. Every commit is a version folder `PACK/.versions/<commit>/` and
`PACK/current` links to the last one; `PACK/manifest.json`, `PACK/steps` and `PACK/episodes` lead
through `current` (see pack_layout). `commit()` makes buffered rows durable:

1. finish the staged files (their sha256 is computed while the bytes are written) and fsync them;
2. build the next version folder: hard links to the files the commit keeps, then each staged file
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
import importlib.metadata
import os
import platform
import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from telemetry.config import TelemetryConfig, load_config
from telemetry.errors import ConfigError, PackError
from telemetry.feature_schema import FeatureSchema
from telemetry.manifest import (
    TABLES,
    FeatureSchemaEntry,
    FileEntry,
    Manifest,
    Provenance,
    Table,
    encode_schema,
    fsync_dir,
    named_os_error,
    read_manifest,
)
from telemetry.pack_layout import (
    create_links,
    inside,
    is_canonical,
    migrate,
    prune,
    publish,
    remove_uncommitted,
    version_dir,
)
from telemetry.pack_lock import WriterLock
from telemetry.pack_rows import check_decisions, conform, from_rows, with_identity
from telemetry.pack_schema import DEFAULT_ACTIONS, check_actions, episodes_schema, steps_schema
from telemetry.quick_stats import QuickStats, merge_all, numeric_columns
from telemetry.splits import DEFAULT_SPLITS, assign_splits, check_splits

ROW_GROUP_ROWS = 65_536
MAX_FILE_ROWS = 16 * ROW_GROUP_ROWS
MAX_SMALL_FILES = 32
STAGING = "_staging"
PART_PREFIX = "part-"
_WRITE_BUFFER = 8 << 20
_IN_FLIGHT = 2
_WORKERS = max(2, min(4, os.cpu_count() or 2))


_FAULT_KILL = os.environ.get("ESPER_FAULT_KILL")  # read once; see _checkpoint
_fault_seen: dict[str, int] = {}


def _checkpoint(stage: str) -> None:
    """A named step of the commit protocol; tests replace this to inject a crash between steps.

    Stages of a commit, in order: "staged" (new files fsynced), "linked" (kept files linked into
    the new version folder), "renamed" (after each new file moved in), "manifest_staged" (manifest
    and folders fsynced), "manifest_replaced" (`current` renamed: committed), "old_deleted" (after
    each old version folder deleted). Converting a pack of another layout (open_append) passes
    "migrate_linked", "migrate_published", and "migrate_swapped" after each top-level link (where
    no atomic exchange exists, "migrate_moved_aside" between a folder's move and its link's).

    Fault-injection hook of the reliability tests (tests/test_reliability_kills.py): with
    ESPER_FAULT_KILL="STAGE:N" in the environment at import, the process SIGKILLs itself the N-th
    time it reaches STAGE. Unset (always, outside those tests), this is one comparison.
    """
    if _FAULT_KILL is not None:
        _fault_seen[stage] = _fault_seen.get(stage, 0) + 1
        if _FAULT_KILL == f"{stage}:{_fault_seen[stage]}":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


# ---- Parquet settings ----------------------------------------------------------------------------

def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """The Parquet settings of every pack file, chosen by measuring diagnostic-width telemetry.

    zstd (Arrow's default level). Float columns are never dictionary-encoded: on 136 float32
    telemetry columns a dictionary made files 36% larger and writes 4.5x slower. Float columns
    are byte-stream-split: 6.5% smaller overall (11% on losses, accuracies and their histories, 5%
    on gradient statistics) at the same write and read speed (within run-to-run noise); it only
    loses on mostly-zero columns, which are tiny either way. Strings and integers (episode ids,
    actions, flags, epochs) keep dictionaries. Column statistics are kept so readers can prune
    row groups.
    Exposed so a comparison writes the same bytes without the pack machinery.
    """
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    dictionary = [path for f in schema for path, leaf in _leaves(f.name, f.type)
                  if not (pa.types.is_floating(leaf) or pa.types.is_boolean(leaf))]
    return {
        "compression": "zstd",
        "use_dictionary": dictionary,
        "use_byte_stream_split": floats,
        "write_statistics": True,
        "store_schema": True,
    }


def _leaves(path: str, type_: pa.DataType) -> Iterable[tuple[str, pa.DataType]]:
    """Parquet column paths of a (possibly nested) Arrow column, as pyarrow names them."""
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        yield from _leaves(f"{path}.list.element", type_.value_type)
    elif pa.types.is_struct(type_):
        for i in range(type_.num_fields):
            child = type_.field(i)
            yield from _leaves(f"{path}.{child.name}", child.type)
    else:
        yield path, type_


# ---- staged files --------------------------------------------------------------------------------

class _HashingFile:
    """A write-only file object that hashes bytes on their way to disk, so no re-read is needed."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        return self.raw.write(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.closed = True


@dataclass
class _StagedFile:
    staged: Path
    table: Table
    split: str
    rows: int
    size: int
    sha256: str


class _FileSink:
    """One staged Parquet file being written; writes reach the hashing file in large buffered blocks."""

    def __init__(self, path: Path, schema: pa.Schema, options: dict[str, Any]) -> None:
        self.path = path
        self._raw = open(path, "wb")  # noqa: SIM115 - closed in close()/discard()
        self._hashing = _HashingFile(self._raw)
        self._stream = pa.output_stream(self._hashing, buffer_size=_WRITE_BUFFER)
        self._writer = pq.ParquetWriter(self._stream, schema, **options)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        except OSError as exc:  # e.g. ENOSPC: say which file (write and fsync errors carry no name)
            raise named_os_error(exc, self.path) from exc
        self.rows += table.num_rows

    def close(self, table: Table, split: str) -> _StagedFile:
        try:
            self._writer.close()
            self._stream.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        except OSError as exc:
            raise named_os_error(exc, self.path) from exc
        digest = self._hashing.sha256.hexdigest()
        return _StagedFile(self.path, table, split, self.rows, self._hashing.size, digest)

    def discard(self) -> None:
        for closing in (self._writer.close, self._stream.close):
            try:
                closing()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
        self._raw.close()
        self.path.unlink(missing_ok=True)


class _TableStream:
    """Rows of one (table, split) on their way into staged files, written in full row groups.

    Row groups are encoded on the writer's worker threads (pyarrow releases the GIL), in order,
    one at a time per stream, so the caller keeps producing rows while earlier rows compress and
    the splits' files are written in parallel. At most _IN_FLIGHT row groups wait per stream.
    """

    def __init__(self, writer: PackWriter, table: Table, split: str,
                 stats: Callable[[pa.Table], QuickStats] | None) -> None:
        self.writer = writer
        self.table = table
        self.split = split
        self._stats = stats
        self._pending: list[pa.Table] = []
        self.pending_rows = 0
        self.uncommitted_rows = 0
        self._sink: _FileSink | None = None
        self._done: list[_StagedFile] = []
        self._stats_futures: list[Future[QuickStats]] = []
        self._writes: list[Future[None]] = []

    def append(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        self._pending.append(rows)
        self.pending_rows += rows.num_rows
        self.uncommitted_rows += rows.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush(full_groups_only=True)

    def _flush(self, full_groups_only: bool) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        n = table.num_rows - table.num_rows % ROW_GROUP_ROWS if full_groups_only else table.num_rows
        if n == 0:
            return
        head, rest = table.slice(0, n), table.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows
        if head.column(0).num_chunks > 16:  # many small appends: one contiguous chunk encodes faster
            head = head.combine_chunks()
        pool = self.writer._pool
        if self._stats is not None:
            self._stats_futures.append(pool.submit(self._stats, head))
        previous = self._writes[-1] if self._writes else None
        self._writes.append(pool.submit(self._write_after, previous, head))
        while sum(not f.done() for f in self._writes) > _IN_FLIGHT:
            self._writes[-_IN_FLIGHT - 1].result()

    def _write_after(self, previous: Future[None] | None, table: pa.Table) -> None:
        if previous is not None:
            previous.result()
        offset = 0
        while offset < table.num_rows:
            if self._sink is None:
                self._sink = self.writer._new_sink(self.table)
            part = table.slice(offset, MAX_FILE_ROWS - self._sink.rows)
            self._sink.write(part)
            offset += part.num_rows
            if self._sink.rows >= MAX_FILE_ROWS:
                self._done.append(self._sink.close(self.table, self.split))
                self._sink = None

    def finish(self) -> tuple[list[_StagedFile], QuickStats]:
        """Close every staged file of this stream and return them with the stats of their rows."""
        self._flush(full_groups_only=False)
        for write in self._writes:
            write.result()
        if self._sink is not None:
            self._done.append(self._sink.close(self.table, self.split))
            self._sink = None
        stats = merge_all(f.result() for f in self._stats_futures)
        done, self._done, self._stats_futures, self._writes = self._done, [], [], []
        self.uncommitted_rows = 0
        return done, stats

    def discard(self) -> None:
        for future in [*self._writes, *self._stats_futures]:
            future.cancel()
        for future in self._writes:
            if not future.cancelled():
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - the rows are being thrown away
                    pass
        if self._sink is not None:
            self._sink.discard()
        for staged in self._done:
            staged.staged.unlink(missing_ok=True)
        self._pending, self.pending_rows, self.uncommitted_rows, self._sink, self._done = [], 0, 0, None, []
        self._stats_futures, self._writes = [], []


# ---- the writer ----------------------------------------------------------------------------------

class PackWriter:
    """The only way data gets into a pack. Not thread-safe; one writer per pack (a lock enforces it).

    Create with `PackWriter.create` or `PackWriter.open_append`; use as a context manager: a clean
    exit closes (commit + compaction), an exception aborts (the pack stays at its last commit).
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
        self._streams: dict[tuple[Table, str], _TableStream] = {}
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
        `pack_schema.profile_feature_names`); it is what lets `tensors(features="standard")` slice a
        larger pack exactly. `provenance` adds to the versions, host and command line recorded
        automatically (e.g. dataset, seeds, host_model). `actions` and `splits` fix the action
        vocabulary and the split fractions for the life of the pack.
        """
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise PackError(f"{root}: already exists and is not an empty directory; "
                            "use PackWriter.open_append to add to an existing pack")
        manifest = _initial_manifest(root, config, feature_schema, provenance, actions, splits, profiles,
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
        a copy that followed the links, is converted to version folders first (pack_layout.migrate).
        """
        root = Path(path)
        _check_same(root, read_manifest(root), config, feature_schema)
        lock = WriterLock.acquire(root)
        try:
            manifest = read_manifest(root)
            _check_same(root, manifest, config, feature_schema)
            shutil.rmtree(root / STAGING, ignore_errors=True)
            remove_uncommitted(root)
            if not is_canonical(root, manifest):
                migrate(root, manifest, _checkpoint)
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
        self._check_episode_ids(ids)
        self._check_steps(steps, episodes)
        splits = assign_splits(ids, self._manifest.splits)
        episodes = self._fill_episode_index(episodes)
        names = list(self._manifest.splits)
        codes = np.array([names.index(s) for s in splits], dtype=np.int64)
        step_codes = codes[pc.index_in(steps.column("episode_id"), value_set=episodes.column("episode_id"))
                           .to_numpy(zero_copy_only=False)] if steps.num_rows else codes[:0]
        for code in np.unique(codes):
            self._stream("episodes", names[code]).append(_rows_where(episodes, codes, code))
        for start in range(0, steps.num_rows, ROW_GROUP_ROWS):  # slices: routing overlaps encoding
            chunk, chunk_codes = steps.slice(start, ROW_GROUP_ROWS), step_codes[start:start + ROW_GROUP_ROWS]
            for code in np.unique(chunk_codes):
                self._stream("steps", names[code]).append(_rows_where(chunk, chunk_codes, code))
        self._known_ids.update(ids)
        self._next_index += len(ids)
        return splits

    def _check_episode_ids(self, ids: list[str]) -> None:
        seen: set[str] = set()
        for episode_id in ids:
            if episode_id in self._known_ids:
                raise PackError(f"episode {episode_id!r} is already in the pack {self.path}")
            if episode_id in seen:
                raise PackError(f"episode {episode_id!r} is given twice")
            if not episode_id:
                raise PackError("episode_id is empty; expected a non-empty string")
            seen.add(episode_id)

    def _check_steps(self, steps: pa.Table, episodes: pa.Table) -> None:
        if steps.num_rows == 0:
            return
        ep_ids = episodes.column("episode_id")
        index = pc.index_in(steps.column("episode_id"), value_set=ep_ids)
        if index.null_count:
            bad = steps.column("episode_id").filter(pc.is_null(index))[0].as_py()
            raise PackError(f"steps: episode_id {bad!r} has no episode among those being added")
        keys = index.to_numpy(zero_copy_only=False).astype(np.int64) << 32
        keys += steps.column("step").to_numpy().astype(np.int64) + 2**31
        keys.sort()
        dup = np.flatnonzero(keys[1:] == keys[:-1])
        if len(dup):
            key = int(keys[dup[0]])
            step = (key & 0xFFFFFFFF) - 2**31
            raise PackError(f"episode {ep_ids[key >> 32].as_py()!r}: step {step} appears twice")
        check_decisions(steps, self._actions)

    def _fill_episode_index(self, episodes: pa.Table) -> pa.Table:
        """Missing episode_index values continue the pack's numbering, in the order given."""
        column = episodes.column("episode_index").combine_chunks()
        if column.null_count == 0:
            return episodes
        fallback = pa.array(np.arange(self._next_index, self._next_index + episodes.num_rows, dtype=np.int64))
        filled = pc.if_else(pc.is_null(column), fallback, column)
        return episodes.set_column(episodes.schema.get_field_index("episode_index"),
                                   episodes.schema.field("episode_index"), filled)

    def _stream(self, table: Table, split: str) -> _TableStream:
        key = (table, split)
        if key not in self._streams:
            stats = self._steps_stats if table == "steps" else QuickStats.of_episodes
            self._streams[key] = _TableStream(self, table, split, stats)
        return self._streams[key]

    def _steps_stats(self, table: pa.Table) -> QuickStats:
        return QuickStats.of_steps(table, self._stat_columns)

    def _new_sink(self, table: Table) -> _FileSink:
        path = self.path / STAGING / f"{table}-{uuid.uuid4().hex}.parquet"
        return _FileSink(path, self._schemas[table], self._options[table])

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
        staged: list[_StagedFile] = []
        split_stats = dict(self._manifest.split_stats)
        self._state = "failed"  # until every stream is finished: a half-written staged file is never retried
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
        placed: list[tuple[_StagedFile, FileEntry]] = []
        for (table, split), small in plans.items():
            stream = _TableStream(self, table, split, stats=None)
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

    def _entry_for(self, staged: _StagedFile) -> FileEntry:
        name = f"{PART_PREFIX}{self._manifest.commit + 1:06d}-{uuid.uuid4().hex[:12]}.parquet"
        return FileEntry(path=f"{staged.table}/split={staged.split}/{name}", table=staged.table,
                         split=staged.split, rows=staged.rows, bytes=staged.size, sha256=staged.sha256)

    def _publish(self, placed: list[tuple[_StagedFile, FileEntry]], files: list[FileEntry],
                 split_stats: dict[str, QuickStats]) -> None:
        """Steps 2-5 of the protocol; a failure disables the writer (the pack stays at its last commit)."""
        self._state = "failed"
        _checkpoint("staged")
        manifest = self._manifest.with_commit(files, split_stats, datetime.now(timezone.utc))
        previous, version = version_dir(self.path, self._manifest.commit), version_dir(self.path, manifest.commit)
        if version.exists():  # left by a commit that failed in this process: nothing reads it
            shutil.rmtree(version)
        new = {entry.path for _, entry in placed}
        folders = set()
        for entry in files:
            if entry.path not in new:
                target = version / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(previous / entry.path, target, follow_symlinks=False)
                except FileNotFoundError:
                    raise PackError(f"{self.path / entry.path}: listed in manifest.json but missing; "
                                    f"run `esper validate {self.path}`") from None
                folders.add(target.parent)
        _checkpoint("linked")
        for staged, entry in placed:
            target = version / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.staged, target)
            folders.add(target.parent)
            _checkpoint("renamed")
        for folder in folders:
            fsync_dir(folder)
        publish(self.path, manifest, _checkpoint)
        self._manifest = manifest
        prune(self.path, _checkpoint)
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
                prune(self.path, _checkpoint, keep_previous=False)  # a closed pack is one version folder
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


# ---- helpers -------------------------------------------------------------------------------------

def _rows_where(table: pa.Table, codes: np.ndarray, code: int) -> pa.Table:
    selected = codes == code
    return table if selected.all() else table.filter(pa.array(selected))


def _initial_manifest(root: Path, config: TelemetryConfig, feature_schema: FeatureSchema,
                      provenance: Mapping[str, Any] | None, actions: Sequence[str] | None,
                      splits: Mapping[str, float] | None, profiles: Mapping[str, Sequence[str]] | None,
                      pack_id: str | None) -> Manifest:
    """Every argument checked and the manifest built before anything touches the disk."""
    if not isinstance(config, TelemetryConfig):
        raise PackError(f"config: expected a TelemetryConfig, got {type(config).__name__}")
    if not isinstance(feature_schema, FeatureSchema):
        raise PackError(f"feature_schema: expected a FeatureSchema, got {type(feature_schema).__name__}")
    names = check_actions(DEFAULT_ACTIONS if actions is None else actions)
    fractions = check_splits(DEFAULT_SPLITS if splits is None else splits)
    now = datetime.now(timezone.utc)
    try:
        manifest = Manifest(
            pack_id=pack_id or f"{root.name}-{now:%Y%m%d}-{uuid.uuid4().hex[:8]}",
            created_at=now,
            committed_at=now,
            commit=0,
            telemetry_config=config,
            feature_schema=FeatureSchemaEntry.of(feature_schema),
            profiles=_profiles(config, feature_schema, profiles),
            actions=names,
            splits=fractions,
            arrow_schemas={"steps": encode_schema(steps_schema(feature_schema)),
                           "episodes": encode_schema(episodes_schema())},
            quick_stats=QuickStats(),
            split_stats={s: QuickStats() for s in fractions},
            files=[],
            provenance=_provenance(provenance),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PackError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    try:
        manifest.to_json()
    except PydanticSerializationError as exc:
        reason = str(exc).splitlines()[0]
        raise PackError(f"provenance: a value is not JSON-serialisable ({reason})") from None
    return manifest


def _profiles(config: TelemetryConfig, feature_schema: FeatureSchema,
              given: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """The given profiles' feature names; without them, at least the pack's own profile when the
    config is that built-in profile unchanged (its names are then exactly this schema's)."""
    if given is not None:
        return {str(name): [str(n) for n in names] for name, names in given.items()}
    try:
        builtin = load_config(config.profile_name)
    except ConfigError:
        return {}
    return {config.profile_name: feature_schema.names} if builtin == config else {}


def _provenance(given: Mapping[str, Any] | None) -> Provenance:
    """Versions, host and command line recorded automatically, then the caller's keys over them."""
    try:
        return Provenance.model_validate({**_auto_provenance(), **dict(given or {})})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PackError(f"provenance.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _auto_provenance() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "esper_version": version("esper-telemetry"),
        "python_version": platform.python_version(),
        "torch_version": version("torch"),
        "pyarrow_version": pa.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "command_line": list(sys.argv),
    }


def _check_same(root: Path, manifest: Manifest, config: TelemetryConfig,
                feature_schema: FeatureSchema) -> None:
    """Appending rows of another schema would make the pack unreadable as one table; refuse it."""
    difference = _first_difference(manifest.telemetry_config.model_dump(mode="json"),
                                   config.model_dump(mode="json"))
    if difference:
        key, ours, theirs = difference
        raise PackError(f"{root}: cannot append: telemetry_config.{key} is {ours!r} in the pack "
                        f"but {theirs!r} here")
    pack, given = manifest.features().specs, feature_schema.specs
    for i, (a, b) in enumerate(zip(pack, given, strict=False)):
        if a != b:
            raise PackError(f"{root}: cannot append: feature {i} is {a.name!r} ({a.dtype}) in the pack "
                            f"but {b.name!r} ({b.dtype}) here")
    if len(pack) != len(given):
        raise PackError(f"{root}: cannot append: the pack has {len(pack)} features, "
                        f"this feature schema {len(given)}")


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def _committed_episode_ids(root: Path, manifest: Manifest) -> set[str]:
    ids: set[str] = set()
    for entry in manifest.files_of("episodes"):
        try:
            ids.update(pq.read_table(root / entry.path, columns=["episode_id"]).column(0).to_pylist())
        except (OSError, pa.ArrowException) as exc:
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
