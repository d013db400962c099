"""Row groups of Parquet files into one preallocated row-major float32 matrix, in parallel.

`Pack.tensors()` needs a C-contiguous [rows, features] float32 matrix, the label of each row and its
valid-action mask, from files stored column by column. Reading everything into Arrow first and
converting afterwards holds two copies of the data and leaves the cores idle in turn. Here the row
count of every row group is known from the file footers, so each row group has its place in the
output before anything is read: one task per row group reads it (decoding releases the GIL) and
writes its columns straight into its rows of the matrix, while other tasks decode theirs. The order
of rows is the order of the files and row groups given, whatever order the tasks finish in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry.errors import PackError

_WORKERS = max(2, min(8, os.cpu_count() or 2))
_BLOCK_ROWS = 8192  # rows of the matrix written at a time: 8192 x 155 float32 is 5 MB


@dataclass(frozen=True)
class RowGroup:
    path: Path
    index: int  # the row group within its file
    start: int  # its first row in the output
    rows: int
    metadata: pq.FileMetaData


def row_groups(paths: Sequence[Path]) -> list[RowGroup]:
    """Every row group of `paths`, in order, with the output row it starts at."""
    out, start = [], 0
    for path in paths:
        meta = pq.read_metadata(path)
        for i in range(meta.num_row_groups):
            rows = meta.row_group(i).num_rows
            out.append(RowGroup(path, i, start, rows, meta))
            start += rows
    return out


@dataclass
class Matrix:
    """The outputs every task writes its rows into."""

    features: np.ndarray  # float32 [rows, names]
    labels: np.ndarray  # int64 [rows]
    masks: np.ndarray  # bool [rows, actions]


def read_matrix(paths: Sequence[Path], rows: int | None, names: Sequence[str], label_column: str,
                actions: Sequence[str], centre: np.ndarray | None, scale: np.ndarray | None, no_action: int,
                episodes: Sequence[str] | None = None) -> Matrix:
    """The matrix, labels and masks of the rows of `paths`: all of them (`rows`, as the manifest
    says), or those of `episodes` (their row groups' `episode_id` read first, to place them)."""
    groups = row_groups(paths)
    keep = None
    if episodes is not None:
        groups, keep = _selected(groups, pa.array(list(episodes), pa.string()))
    total = sum(g.rows for g in groups)
    if episodes is None and total != rows:
        raise ValueError(f"the steps files hold {total} rows but manifest.json lists {rows}")
    out = Matrix(_pooled((total, len(names)), np.float32), _pooled((total,), np.int64),
                 _pooled((total, len(actions)), np.bool_))
    fill(groups, out, names, label_column, actions, centre, scale, no_action, keep)
    return out


def _selected(groups: Sequence[RowGroup], wanted: pa.Array) -> tuple[list[RowGroup], list[pa.Array]]:
    """Each row group's rows of the wanted episodes (a mask), placed one after another."""
    placed, masks, start = [], [], 0
    for g in groups:
        ids = pq.ParquetFile(g.path, metadata=g.metadata).read_row_group(g.index, columns=["episode_id"])
        mask = pc.is_in(ids.column(0), value_set=wanted).combine_chunks()
        n = int(pc.sum(mask).as_py() or 0)
        placed.append(RowGroup(g.path, g.index, start, n, g.metadata))
        masks.append(mask)
        start += n
    return placed, masks


def fill(groups: Sequence[RowGroup], out: Matrix, names: Sequence[str], label_column: str, actions: Sequence[str],
         centre: np.ndarray | None, scale: np.ndarray | None, no_action: int,
         keep: Sequence[pa.Array] | None = None) -> None:
    """Read every row group and write it into its rows of `out` (see the module docstring).

    Features: numbers as float32, standardised with `centre` and `scale` when given, nulls 0.0
    after standardising (so a null lands on the mean). Labels: the index of `label_column`'s action
    name in `actions`, `no_action` where null or unknown. Masks: `action_mask`, all True where null.
    With `keep` (a mask per row group), only those rows, which `groups` has already placed.
    """
    columns = [*names, label_column, "action_mask"]
    value_set = pa.array(list(actions), pa.string())

    def task(number: int) -> None:
        group = groups[number]
        if group.rows == 0:
            return
        file = pq.ParquetFile(group.path, metadata=group.metadata)
        table = file.read_row_group(group.index, columns=columns, use_threads=False)
        if keep is not None:
            table = table.filter(keep[number])
        rows = slice(group.start, group.start + group.rows)
        _features(table, names, out.features[rows], centre, scale)
        index = pc.index_in(table.column(label_column), value_set=value_set)
        out.labels[rows] = pc.fill_null(index, no_action).to_numpy(zero_copy_only=False)
        _masks(table.column("action_mask").combine_chunks(), out.masks[rows])

    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="pack-matrix") as pool:
        for future in [pool.submit(task, i) for i in range(len(groups))]:
            future.result()


def _pooled(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """An uninitialised array in memory from Arrow's default pool rather than a fresh mapping.

    A matrix of a million rows is hundreds of megabytes. Fresh pages cost the kernel 0.2 s to
    fault in (4 KB pages) and up to 1.5 s when it must compact memory for huge pages, differently
    on every call. Arrow's pool (the one `pq.read_table` decodes into) keeps freed memory for the
    next allocation, so a second load of the same size faults nothing. The array keeps its buffer
    alive (numpy holds the exporter), and so does the torch tensor made from it.
    """
    count = int(np.prod(shape))
    buffer = pa.allocate_buffer(count * np.dtype(dtype).itemsize)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _features(table: pa.Table, names: Sequence[str], dest: np.ndarray, centre: np.ndarray | None,
              scale: np.ndarray | None) -> None:
    """The columns into `dest`, _BLOCK_ROWS rows at a time: each block of columns is first copied
    contiguously into a column-major buffer (one np.stack), then transposed into its rows by
    torch's cache-blocked transpose. Writing each column straight into its strided place in the
    rows, as before, cost 40% more. Nulls are resolved in each contiguous column first: filling
    them in `dest` afterwards was a strided pass per column that cost as much as the scatter."""
    import torch

    values = [_column(table.column(name), None if centre is None else (centre[j], scale[j]))
              for j, name in enumerate(names)]
    staging = np.empty((len(values), min(_BLOCK_ROWS, len(dest))), dtype=np.float32)
    for start in range(0, len(dest), _BLOCK_ROWS):
        n = min(_BLOCK_ROWS, len(dest) - start)
        block = staging if n == staging.shape[1] else np.empty((len(values), n), dtype=np.float32)
        np.stack([v[start:start + n] for v in values], axis=0, out=block)
        torch.from_numpy(dest[start:start + n]).copy_(torch.from_numpy(block).T)


def _column(chunks: pa.ChunkedArray, standardise: tuple[float, float] | None) -> np.ndarray:
    """One feature as a contiguous numpy vector: standardised when asked, nulls 0.0 (after
    standardising, so a null lands on the mean); NaN and Inf values pass through."""
    column = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()
    if standardise is None:
        return (pc.fill_null(column, 0) if column.null_count else column).to_numpy(zero_copy_only=False)
    v = column.to_numpy(zero_copy_only=False).astype(np.float32)
    v -= standardise[0]
    v /= standardise[1]
    if column.null_count:
        v[column.is_null().to_numpy(zero_copy_only=False)] = 0.0
    return v


def _masks(mask: pa.Array, dest: np.ndarray) -> None:
    dest[:] = True
    if mask.null_count < len(mask):
        valid = mask.is_valid().to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(mask).to_numpy(zero_copy_only=False)
        if flat.size != int(valid.sum()) * dest.shape[1]:  # masks of another action vocabulary
            raise PackError(f"action_mask holds {flat.size} entries for {int(valid.sum())} steps, but manifest.json "
                            f"lists {dest.shape[1]} actions (edited?); run `esper validate`")
        dest[valid] = flat.reshape(-1, dest.shape[1])
