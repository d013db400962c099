"""Rows on their way into a pack: staged Parquet files, hashed while written, in full row groups.

Nothing here is visible to readers: staged files live in `PACK/_staging/` until a commit renames
them into a version folder (see commit.py). Each (table, split) has one stream; row groups are
encoded on the writer's worker threads so the caller keeps producing rows meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry.packs.manifest import Table, named_os_error
from telemetry.packs.parquet import MAX_FILE_ROWS, ROW_GROUP_ROWS
from telemetry.packs.quick_stats import QuickStats, merge_all
from telemetry.packs.writeback import start_writeback

STAGING = "_staging"  # PACK/_staging/: files being written, part of no commit
_WRITE_BUFFER = 8 << 20
_IN_FLIGHT = 2
ROUTING_POOL = pa.system_memory_pool()  # short-lived copies: mimalloc's fresh pages fault as much as copying


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
        self._flushed = 0  # bytes whose writeback has been started (writeback.py)

    def write(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self._raw.flush()
            end = self._raw.tell()
            start_writeback(self._raw.fileno(), self._flushed, end - self._flushed)
            self._flushed = end
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


@dataclass
class _Piece:
    """Rows [start, start + rows) of `source`, or of its rows where `selected` is True (copied late)."""

    source: pa.Table
    selected: np.ndarray | None
    start: int
    rows: int

    def table(self) -> pa.Table:
        if self.selected is None:
            return self.source.slice(self.start, self.rows)
        at = np.flatnonzero(self.selected)
        low, high = int(at[self.start]), int(at[self.start + self.rows - 1]) + 1
        keep = pa.array(self.selected[low:high])
        return pc.filter(self.source.slice(low, high - low), keep, memory_pool=ROUTING_POOL)


class _Lane:
    """Row groups bound for one staged file at a time, run in order on the shared pool without blocking it.

    One Parquet file takes one row group at a time, so a lane's work is serial; but a pool thread
    that waited for a lane's previous row group would idle a core. A lane instead keeps its own
    queue and has at most one task in the pool, which runs one row group and then queues the
    next behind everyone else's, so lanes share the threads round-robin.
    """

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._queue: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def submit(self, work: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._queue.append((work, future))
            if not self._scheduled:
                self._scheduled = True
                self._pool.submit(self._run_one)
        return future

    def _run_one(self) -> None:
        with self._lock:
            work, future = self._queue.popleft()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
        with self._lock:
            self._scheduled = bool(self._queue)
            if self._scheduled:
                self._pool.submit(self._run_one)


class TableStream:
    """Rows of one (table, split) on their way into staged files, written in full row groups.

    Row groups are assembled, summarised and encoded on the writer's worker threads (pyarrow
    releases the GIL), so the caller keeps producing rows meanwhile. Rows may come with a
    mask of the ones this split keeps (a bulk add whose episodes interleave splits): they are
    copied out on the worker that encodes them, so routing costs the caller nothing. A stream has
    `lanes` staged files open at once and sends its row groups to them in turn: one Parquet file
    encodes one row group at a time, so a split that holds most of the rows would otherwise keep
    one core busy and the others idle. Row group i goes to lane i % lanes, so what lands in which
    file does not depend on timing, and quick stats are merged in row-group order. At most
    _IN_FLIGHT row groups per lane wait.
    """

    def __init__(self, pool: ThreadPoolExecutor, open_sink: Callable[[], FileSink], table: Table, split: str,
                 stats: Callable[[pa.Table], QuickStats] | None, lanes: int = 1) -> None:
        self._open_sink = open_sink
        self.table = table
        self.split = split
        self._stats = stats
        self._pending: list[_Piece] = []
        self.pending_rows = 0
        self.uncommitted_rows = 0
        self._lanes = [_Lane(pool) for _ in range(max(1, lanes))]
        self._sinks: list[FileSink | None] = [None] * len(self._lanes)
        self._first: list[int] = [0] * len(self._lanes)  # the first row group of each lane's open file
        self._groups = 0  # row groups sent so far: the next goes to lane _groups % lanes
        self._done: list[tuple[int, StagedFile]] = []  # (first row group, file): files listed in row order
        self._group_stats: dict[int, QuickStats] = {}
        self._writes: list[Future[None]] = []
        self._sealed = False  # the last rows and the closes are sent: finish() only waits

    def append(self, rows: pa.Table, selected: np.ndarray | None = None) -> None:
        """Queue `rows`, or only those where `selected` is True, copied when their row group is written
        (all of them selected, as for one episode or one split, is no copy at all)."""
        if selected is not None and selected.all():
            selected = None
        n = rows.num_rows if selected is None else int(selected.sum())
        if n == 0:
            return
        self._pending.append(_Piece(rows, selected, 0, n))
        self.pending_rows += n
        self.uncommitted_rows += n
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush(full_groups_only=True)

    def _flush(self, full_groups_only: bool) -> None:
        n = self.pending_rows - self.pending_rows % ROW_GROUP_ROWS if full_groups_only else self.pending_rows
        for start in range(0, n, ROW_GROUP_ROWS):
            pieces, group = self._take(min(ROW_GROUP_ROWS, n - start)), self._groups
            lane = group % len(self._lanes)
            self._groups += 1
            self._writes.append(self._lanes[lane].submit(partial(self._write, pieces, lane, group)))
        while sum(not f.done() for f in self._writes) > _IN_FLIGHT * len(self._lanes):
            next(f for f in self._writes if not f.done()).result()

    def _take(self, rows: int) -> list[_Piece]:
        """The first `rows` pending rows, as pieces (the last one split if it straddles the cut)."""
        taken: list[_Piece] = []
        while rows:
            piece = self._pending[0]
            if piece.rows <= rows:
                taken.append(self._pending.pop(0))
            else:
                taken.append(replace(piece, rows=rows))
                self._pending[0] = replace(piece, start=piece.start + rows, rows=piece.rows - rows)
            rows -= taken[-1].rows
            self.pending_rows -= taken[-1].rows
        return taken

    def _write(self, pieces: list[_Piece], lane: int, group: int) -> None:
        """Assemble row group `group`, summarise it and write it to the lane's file (files roll over)."""
        table = pa.concat_tables([p.table() for p in pieces])
        if table.column(0).num_chunks > 16:  # many small appends: one contiguous chunk encodes faster
            table = table.combine_chunks()
        if self._stats is not None:
            self._group_stats[group] = self._stats(table)
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
                self._close(lane)

    def _close(self, lane: int) -> None:
        sink = self._sinks[lane]
        if sink is not None:
            self._done.append((self._first[lane], sink.close(self.table, self.split)))
            self._sinks[lane] = None

    def seal(self) -> None:
        """Send the last rows and every file's close to the workers without waiting (streams seal together)."""
        self._flush(full_groups_only=False)
        self._writes += [lane.submit(partial(self._close, i)) for i, lane in enumerate(self._lanes)]
        self._sealed = True

    def finish(self) -> tuple[list[StagedFile], QuickStats]:
        """Close every staged file of this stream (after `seal`, if not yet) and return them with their stats."""
        if not self._sealed:
            self.seal()
        for future in self._writes:
            future.result()
        stats = merge_all(self._group_stats[g] for g in sorted(self._group_stats))
        done = [f for _, f in sorted(self._done, key=lambda item: item[0])]
        self._done, self._group_stats, self._writes, self._groups = [], {}, [], 0
        self.uncommitted_rows, self._sealed = 0, False
        return done, stats

    def discard(self) -> None:
        for future in self._writes:
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
        self._group_stats, self._writes, self._groups, self._sealed = {}, [], 0, False
