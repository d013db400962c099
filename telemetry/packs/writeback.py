"""Early writeback: a staged file's bytes start for the disk while later row groups still encode.

A commit fsyncs every staged file. Left alone, the page cache holds a file's dirty pages until
that fsync, which then writes all of them while the cores wait: the whole pack at once, at the
very end of a bulk write. Linux's sync_file_range(SYNC_FILE_RANGE_WRITE) starts writeback of a
range and returns without waiting (the practice of databases that write large files, e.g.
RocksDB's bytes_per_sync), so each row group goes out while the next encodes and the fsync
finds little left to do. Durability still comes from the fsync alone; where the call does not
exist (not Linux, or a libc without it) this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages in the range, do not wait


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call  # a CDLL call releases the GIL, so encoding threads run on meanwhile


_CALL = _sync_file_range()


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing bytes [offset, offset + nbytes) of `fd` to disk.

    A failure (e.g. EIO) is raised here rather than left for the fsync: the error belongs to these
    bytes, and the caller's file is then abandoned like any failed write.
    """
    if _CALL is None or nbytes <= 0:
        return
    if _CALL(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
