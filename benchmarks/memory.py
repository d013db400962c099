"""Peak memory of one epoch, and the tracker's own transient peak, on CPU or CUDA.

CUDA: `torch.cuda.max_memory_allocated`, reset at the epoch's start and around each tracker call.
CPU: the profiler's allocation events (`profile_memory=True`), summed in time order into a live
byte count; tracker calls are marked with `record_function("tracker")` so their own transient peak
(allocated during the call, above what was live when it began) is read from the same timeline.
Both are in bytes allocated through torch's allocators, not the process's resident size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile, record_function

TRACKER_RANGE = "tracker"


@dataclass
class MemoryReading:
    epoch_peak: int = 0  # bytes above what was live when the epoch began
    tracker_peak: int = 0  # largest transient of one tracker call
    _cuda_high: int = 0  # CUDA: the epoch's high-water mark, kept across the per-call resets


@contextmanager
def tracker_call(reading: MemoryReading | None, device: torch.device) -> Iterator[None]:
    """Wrap one tracker call so its transient peak is measured (a no-op when not measuring)."""
    if reading is None:
        yield
    elif device.type == "cuda":
        reading._cuda_high = max(reading._cuda_high, torch.cuda.max_memory_allocated(device))
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        high = torch.cuda.max_memory_allocated(device)
        reading.tracker_peak = max(reading.tracker_peak, high - before)
        reading._cuda_high = max(reading._cuda_high, high)
    else:
        with record_function(TRACKER_RANGE):
            yield


def measure(run_epoch: Callable[[MemoryReading], None], device: torch.device) -> MemoryReading:
    reading = MemoryReading()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_epoch(reading)
        torch.cuda.synchronize(device)
        reading.epoch_peak = max(reading._cuda_high, torch.cuda.max_memory_allocated(device)) - start
        return reading
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_epoch(reading)
    events = prof.profiler.kineto_results.events()
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    calls = [(e.start_ns(), e.end_ns()) for e in events if e.name() == TRACKER_RANGE]
    live, peak, timeline = 0, 0, []
    for t, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
        timeline.append((t, live))
    reading.epoch_peak = peak
    reading.tracker_peak = max((_transient(timeline, a, b) for a, b in calls), default=0)
    return reading


def _transient(timeline: list[tuple[int, int]], start: int, end: int) -> int:
    before = next((live for t, live in reversed(timeline) if t < start), 0)
    inside = [live for t, live in timeline if start <= t <= end]
    return max(inside, default=before) - before
