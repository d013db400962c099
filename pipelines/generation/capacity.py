"""What this machine can hold: the cap on worker processes, so `--workers 10000` never forks 10,000.

A worker runs one episode at a time on one torch thread, so more workers than CPU cores only
time-slice the same cores, and each holds its own Python, torch and copy of the data set in memory
(about `WORKER_BASE_BYTES` plus the data set's tensors). The cap is the smaller of the cores this
process may run on and the memory available now divided by that estimate; asking for more is not
an error, it is capped with one line that says so and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Resident memory of an idle episode worker (Python, torch, numpy, pyarrow imported; the issue that
# asked for this cap measured about 385 MB): rounded up, so the cap errs on the side of fewer workers.
WORKER_BASE_BYTES = 512 * 2**20
GIB = 2**30


@dataclass(frozen=True)
class Capacity:
    cores: int
    available_bytes: int | None  # None where the platform does not say
    per_worker_bytes: int

    @property
    def workers(self) -> int:
        by_memory = self.cores if self.available_bytes is None else self.available_bytes // self.per_worker_bytes
        return max(1, min(self.cores, by_memory))

    def why(self) -> str:
        memory = ("" if self.available_bytes is None else
                  f", {self.available_bytes / GIB:.1f} GiB available at ~{self.per_worker_bytes / GIB:.2f} GiB "
                  "per worker")
        return f"{self.cores} CPU cores{memory}"


def capacity(dataset_bytes: int = 0) -> Capacity:
    return Capacity(cores(), available_memory(), WORKER_BASE_BYTES + dataset_bytes)


def cap_workers(requested: int, dataset_bytes: int = 0) -> tuple[int, str | None]:
    """(workers to start, a line saying why when fewer than requested)."""
    machine = capacity(dataset_bytes)
    if requested <= machine.workers:
        return requested, None
    return machine.workers, (f"--workers {requested}: this machine holds {machine.workers} "
                             f"({machine.why()}); running {machine.workers}")


def cores() -> int:
    """CPU cores this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Memory the kernel could give new processes now without swapping (Linux MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
