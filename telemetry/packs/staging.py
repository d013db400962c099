"""Rows on their way into a pack: staged Parquet files, hashed while written, in full row groups.

Nothing here is visible to readers: staged files live in `PACK/_staging/` until a commit renames
them into a version folder (see commit.py). Each (table, split) has one stream; row groups are
encoded on the writer's worker threads so the caller keeps producing rows meanwhile.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from telemetry.packs.manifest import Table, named_os_error
from telemetry.packs.parquet import MAX_FILE_ROWS, ROW_GROUP_ROWS
from telemetry.packs.quick_stats import QuickStats, merge_all

STAGING = "_staging"  # PACK/_staging/: files being written, part of no commit
_WRITE_BUFFER = 8 << 20
_IN_FLIGHT = 2


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
class StagedFile:
    staged: Path
    table: Table
    split: str
    rows: int
    size: int
    sha256: str


class FileSink:
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

    def close(self, table: Table, split: str) -> StagedFile:
        try:
            self._writer.close()
            self._stream.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        except OSError as exc:
            raise named_os_error(exc, self.path) from exc
        digest = self._hashing.sha256.hexdigest()
        return StagedFile(self.path, table, split, self.rows, self._hashing.size, digest)

    def discard(self) -> None:
        for closing in (self._writer.close, self._stream.close):
            try:
                closing()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
        self._raw.close()
        self.path.unlink(missing_ok=True)


class TableStream:
    """Rows of one (table, split) on their way into staged files, written in full row groups.

    Row groups are encoded on the writer's worker threads (pyarrow releases the GIL), so the caller
    keeps producing rows while earlier rows compress and the splits' files are written in parallel.
    A stream has `lanes` staged files open at once and sends its row groups to them in turn: one
    Parquet file encodes one row group at a time, so a split that holds most of the rows would
    otherwise keep one core busy and the others idle. Row group i goes to lane i % lanes, so what
    lands in which file does not depend on timing. At most _IN_FLIGHT row groups per lane wait.
    """

    def __init__(self, pool: ThreadPoolExecutor, open_sink: Callable[[], FileSink], table: Table, split: str,
                 stats: Callable[[pa.Table], QuickStats] | None, lanes: int = 1) -> None:
        self._pool = pool
        self._open_sink = open_sink
        self.table = table
        self.split = split
        self._stats = stats
        self._pending: list[pa.Table] = []
        self.pending_rows = 0
        self.uncommitted_rows = 0
        self._sinks: list[FileSink | None] = [None] * max(1, lanes)
        self._first: list[int] = [0] * len(self._sinks)  # the first row group of each lane's open file
        self._groups = 0  # row groups sent so far: the next goes to lane _groups % lanes
        self._done: list[tuple[int, StagedFile]] = []  # (first row group, file): files listed in row order
        self._stats_futures: list[Future[QuickStats]] = []
        self._writes: list[Future[None]] = []
        self._last: list[Future[None] | None] = [None] * len(self._sinks)

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
        pool = self._pool
        if self._stats is not None:
            self._stats_futures.append(pool.submit(self._stats, head))
        for start in range(0, head.num_rows, ROW_GROUP_ROWS):
            lane = self._groups % len(self._sinks)
            self._groups += 1
            write = pool.submit(self._write_after, self._last[lane], head.slice(start, ROW_GROUP_ROWS), lane,
                                self._groups - 1)
            self._last[lane] = write
            self._writes.append(write)
        while sum(not f.done() for f in self._writes) > _IN_FLIGHT * len(self._sinks):
            next(f for f in self._writes if not f.done()).result()

    def _write_after(self, previous: Future[None] | None, table: pa.Table, lane: int, group: int) -> None:
        """Write `table` to the lane's file after the lane's previous row group (files roll over)."""
        if previous is not None:
            previous.result()
        offset = 0
        while offset < table.num_rows:
            sink = self._sinks[lane]
            if sink is None:
                sink = self._sinks[lane] = self._open_sink()
                self._first[lane] = group
            part = table.slice(offset, MAX_FILE_ROWS - sink.rows)
            sink.write(part)
            offset += part.num_rows
            if sink.rows >= MAX_FILE_ROWS:
                self._done.append((self._first[lane], sink.close(self.table, self.split)))
                self._sinks[lane] = None

    def finish(self) -> tuple[list[StagedFile], QuickStats]:
        """Close every staged file of this stream and return them with the stats of their rows."""
        self._flush(full_groups_only=False)
        for write in self._writes:
            write.result()
        for lane, sink in enumerate(self._sinks):
            if sink is not None:
                self._done.append((self._first[lane], sink.close(self.table, self.split)))
                self._sinks[lane] = None
        stats = merge_all(f.result() for f in self._stats_futures)
        done = [f for _, f in sorted(self._done, key=lambda item: item[0])]
        self._done, self._stats_futures, self._writes = [], [], []
        self._last, self._groups = [None] * len(self._sinks), 0
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
        for lane, sink in enumerate(self._sinks):
            if sink is not None:
                sink.discard()
                self._sinks[lane] = None
        for _, staged in self._done:
            staged.staged.unlink(missing_ok=True)
        self._pending, self.pending_rows, self.uncommitted_rows, self._done = [], 0, 0, []
        self._stats_futures, self._writes, self._last, self._groups = [], [], [None] * len(self._sinks), 0
