"""One episode as an engine task: run it in the worker and hand back Arrow tables of the pack's schema.

The worker, not the driver, turns the episode's Python rows into Arrow tables: conversion is spread
over the workers, the tables travel compactly (through Ray's object store, or a pool's pipe), and
the driver only checks them and writes. The schemas are the pack's own (from its manifest), so a
worker never derives a schema of its own.

Every episode runs with torch pinned to one thread, on every engine and in every process: the
floats of an episode then depend only on (spec, index), never on where it ran.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from pipelines.environment.datasets import Dataset, load_dataset
from pipelines.generation.engine import Task
from pipelines.generation.episode import EpisodeResult, GenerationSpec, episode_id, run_episode

# Fault injection for the engine tests, in the manner of telemetry.packs.faults: "raise:3,7" makes
# episodes 3 and 7 raise in whatever worker runs them. Read in the driver when the task is made and
# shipped with it, so it reaches workers on any node.
FAULT_ENV = "ESPER_EPISODE_FAULT"


class InjectedFault(RuntimeError):
    """An error raised on purpose by ESPER_EPISODE_FAULT."""


@dataclass(frozen=True)
class EpisodeTables:
    """One finished episode: a one-row episodes table and its steps, both in the pack's schemas."""

    index: int
    episode: pa.Table
    steps: pa.Table


@contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class EpisodeTask(Task):
    """Episode `index` of `spec`, as Arrow tables of `steps_schema` and `episodes_schema`."""

    def __init__(self, spec: GenerationSpec, steps_schema: pa.Schema, episodes_schema: pa.Schema,
                 dataset: Dataset | None = None) -> None:
        self.spec, self.steps_schema, self.episodes_schema = spec, steps_schema, episodes_schema
        self._dataset = dataset  # given in the driver's own process; workers load theirs in setup
        self._raise_at, self._delay = _faults(os.environ.get(FAULT_ENV, ""))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}  # workers load the data set, never receive it

    def setup(self) -> None:
        if self._dataset is None:
            self._dataset = load_dataset(self.spec.dataset, self.spec.data_dir)

    def __call__(self, index: int) -> EpisodeTables:
        if index in self._raise_at:
            raise InjectedFault(f"injected fault in {episode_id(index)} ({FAULT_ENV})")
        time.sleep(self._delay)
        self.setup()
        assert self._dataset is not None
        with one_thread():
            result = run_episode(self.spec, index, self._dataset)
        return to_tables(result, index, self.steps_schema, self.episodes_schema)


def to_tables(result: EpisodeResult, index: int, steps_schema: pa.Schema,
              episodes_schema: pa.Schema) -> EpisodeTables:
    """Rows to tables, refusing a column the schema does not have (Arrow would drop it silently)."""
    eid = result.episode["episode_id"]
    rows = [{"step": i, **row, "episode_id": eid} for i, row in enumerate(result.steps)]
    _check_columns([result.episode], episodes_schema, f"{eid} episode row")
    _check_columns(rows, steps_schema, f"{eid} steps")
    return EpisodeTables(index, pa.Table.from_pylist([result.episode], schema=episodes_schema),
                         pa.Table.from_pylist(rows, schema=steps_schema))


def _check_columns(rows: list[dict[str, Any]], schema: pa.Schema, what: str) -> None:
    allowed = set(schema.names)
    for row in rows:
        unknown = row.keys() - allowed
        if unknown:
            raise ValueError(f"{what}: column {sorted(unknown)[0]!r} is not in the pack's schema")


def _faults(text: str) -> tuple[frozenset[int], float]:
    """`raise:I,J` makes episodes I and J raise; `delay:S` holds every episode S seconds before it runs,
    so that a fault test outside the worker can be sure to find each episode still running."""
    kind, _, value = text.partition(":")
    if kind == "raise":
        return frozenset(int(i) for i in value.split(",") if i.strip()), 0.0
    if kind == "delay":
        return frozenset(), float(value)
    return frozenset(), 0.0
