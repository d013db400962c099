"""Early writeback: a staged file's row groups leave the page cache for the disk while the file is still
being written, before any fsync, and a failure to start writeback is an error naming the file.

The page cache is read with Linux's cachestat(2) (6.5+), which counts a file's dirty pages; the test
skips where it is missing. A file written the same way without the sink, left alone for the same time,
is the control: it is still dirty (the kernel writes dirty pages back on its own after 30 s by default),
or the machine writes back too eagerly to tell, and the test skips.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from telemetry.packs import staging, writeback
from telemetry.packs.parquet import parquet_options
from telemetry.packs.staging import FileSink

_CACHESTAT = 451  # the syscall's number on x86-64 and arm64 alike


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


def _dirty_pages(path: Path) -> int | None:
    """Dirty pages of the file in the page cache, or None where cachestat(2) is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    stat = _Stat()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(_CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(stat), 0) != 0:
            return None
    finally:
        os.close(fd)
    return int(stat.nr_dirty)


def _table(rows: int) -> pa.Table:
    """Incompressible floats, so the file is as large as the data (tens of megabytes)."""
    rng = np.random.default_rng(0)
    return pa.table({f"c{i}": rng.standard_normal(rows, dtype=np.float32) for i in range(8)})


def _wait_clean(path: Path, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while (dirty := _dirty_pages(path) or 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return dirty


def test_a_staged_file_is_written_back_before_it_is_fsynced(tmp_path: Path) -> None:
    control = tmp_path / "control.bin"
    control.write_bytes(np.random.default_rng(1).bytes(8 << 20))
    dirty = _dirty_pages(control)
    if dirty is None:
        pytest.skip("cachestat(2) is unavailable (Linux 6.5+ only); the page cache cannot be inspected")
    if not dirty:
        pytest.skip(f"{tmp_path} keeps no dirty pages (a file system without writeback, e.g. tmpfs)")
    if writeback._CALL is None:
        pytest.fail("sync_file_range is unavailable on a Linux with cachestat")
    table = _table(600_000)
    sink = FileSink(tmp_path / "staged.parquet", table.schema, parquet_options(table.schema))
    try:
        sink.write(table)  # not closed: the close fsyncs; what reached the kernel must be on its way already
        assert os.path.getsize(sink.path) > 8 << 20
        clean = _wait_clean(sink.path, 10.0) == 0
        if not _dirty_pages(control):
            pytest.skip("this machine wrote the control file back on its own within seconds "
                        "(vm.dirty_* settings): early writeback cannot be told apart here")
        assert clean, "the staged file's pages are still dirty without an fsync"
    finally:
        sink.discard()


def test_a_failed_writeback_is_the_writes_error_and_names_the_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO when starting writeback is the write's failure, not something left for the fsync to find
    (which it may not: the kernel reports a writeback error once per file description)."""
    def failing(fd: int, offset: int, nbytes: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(staging, "start_writeback", failing)
    table = _table(1_000)
    sink = FileSink(tmp_path / "staged.parquet", table.schema, parquet_options(table.schema))
    with pytest.raises(OSError) as caught:
        sink.write(table)
    sink.discard()
    assert caught.value.errno == errno.EIO and str(sink.path) in str(caught.value)
    assert not sink.path.exists()


def test_a_bad_descriptor_is_an_error_not_ignored() -> None:
    if writeback._CALL is None:
        pytest.skip("sync_file_range is unavailable here (not Linux); writeback is left to the fsync")
    read_end, write_end = os.pipe()  # sync_file_range refuses a pipe (ESPIPE)
    try:
        with pytest.raises(OSError) as caught:
            writeback.start_writeback(write_end, 0, 4096)
        assert caught.value.errno == errno.ESPIPE
    finally:
        os.close(read_end)
        os.close(write_end)
