"""Engines: where the episodes of a run execute, behind one small interface.

An engine runs a `Task` over integer keys (episode indices) and yields an `Outcome` for each key as
it finishes, in completion order: `Done(key, value)` or `Failed(key, error)`. The caller (the
generation driver) stays the single consumer of the results, so it stays the pack's single writer.

    engine = open_engine(EngineOptions("ray", address="head:6379"), workers=None)
    for outcome in engine.run(task, range(100)):
        ...

The contract every engine keeps, so that the caller never depends on which one runs:

- a task is set up once per worker process (`Task.setup`), then called once per key; a key's value
  depends on (task, key) only, never on the worker, the node or the order;
- an exception raised by a task becomes `Failed(key, "Type: message (file:line)")` and the engine
  goes on with the other keys; a worker process that dies (killed, out of memory) is replaced and
  its key retried up to `WORKER_DEATH_RETRIES` times, then reported as `Failed`;
- keys are drawn lazily from the iterable, at most a few per worker ahead, so a caller can pass a
  generator of any length and stop feeding it at any time; closing the `run` generator cancels
  what is in flight.

`local` (local_engine.py) is a process pool on this machine, the embedded default; `ray`
(ray_engine.py) runs each key as a Ray task on an existing cluster (`address`) or a local Ray
instance, with the optional extra `pip install esper-telemetry[ray]`. Any picklable `Task` can use
them; the episode task of `esper generate` is episode_task.py.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from telemetry import EsperError

ENGINES = ("local", "ray")
WORKER_DEATH_RETRIES = 3  # a key whose worker died this many times more is reported as failed
QUEUED_PER_WORKER = 2  # keys in flight per worker slot: enough to keep workers busy, little to cancel


class EngineError(EsperError):
    """Engine settings that cannot work, or an engine that cannot be reached."""


@dataclass(frozen=True)
class EngineOptions:
    """How to run: the engine and, for Ray, the cluster and what each episode reserves on it."""

    kind: str = "local"
    address: str | None = None  # Ray only: an existing cluster; None starts a local Ray instance
    cpus_per_episode: float = 1.0  # Ray only: CPUs a task reserves (torch still runs one thread)
    gpus_per_episode: float = 0.0  # Ray only: GPUs a task reserves; fractions share a GPU

    def check(self, device: str = "cpu") -> None:
        """Refuse settings that would be ignored or could not schedule, before anything starts."""
        if self.kind not in ENGINES:
            raise EngineError(f"--engine {self.kind!r}: expected one of {', '.join(ENGINES)}")
        ray_only = {"--address": self.address is not None, "--cpus-per-episode": self.cpus_per_episode != 1.0,
                    "--gpus-per-episode": self.gpus_per_episode != 0.0}
        given = [name for name, set_ in ray_only.items() if set_]
        if self.kind == "local" and given:
            raise EngineError(f"{given[0]} applies to --engine ray; the local pool runs one process per worker")
        if not self.cpus_per_episode > 0:
            raise EngineError(f"--cpus-per-episode must be > 0, got {self.cpus_per_episode}")
        if not self.gpus_per_episode >= 0:
            raise EngineError(f"--gpus-per-episode must be >= 0, got {self.gpus_per_episode}")
        if self.address is not None and not self.address.strip():
            raise EngineError("--address is empty; expected a Ray cluster address such as head-node:6379")
        if self.kind == "ray" and device.startswith("cuda") and self.gpus_per_episode == 0:
            raise EngineError(f"--device {device} with --engine ray needs --gpus-per-episode > 0 (Ray hides the "
                              "GPUs from tasks that reserve none), e.g. --gpus-per-episode 0.25")
        if self.gpus_per_episode > 0 and not device.startswith("cuda"):
            raise EngineError(f"--gpus-per-episode {self.gpus_per_episode} with --device {device}: the episodes "
                              "would reserve GPUs they never use; pass --device cuda")


class Task:
    """A picklable unit of work: set up once per worker process, then called once per key."""

    def setup(self) -> None:
        """Per-process preparation (load a data set...); runs in the worker, before the first key."""
        return None

    def __call__(self, key: int) -> Any:
        """The value for `key`; must depend on (self, key) only."""
        raise NotImplementedError


@dataclass(frozen=True)
class Done:
    key: int
    value: Any


@dataclass(frozen=True)
class Failed:
    key: int
    error: str  # one line: "Type: message (file:line)", or what happened to the worker


Outcome = Done | Failed


def call(task: Task, key: int) -> Outcome:
    """Run one key, turning an exception into `Failed` (the same text on every engine)."""
    try:
        return Done(key, task(key))
    except Exception as exc:  # noqa: BLE001 - any error of a task is reported with its key, not raised
        return Failed(key, describe(exc))


def describe(exc: BaseException) -> str:
    """'Type: message (file:line)' of the innermost frame, on one line."""
    message = " ".join(str(exc).split()) or "(no message)"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {message}{where}"


class Engine(ABC):
    """Runs tasks over keys; see the module docstring for the contract."""

    name: str

    @abstractmethod
    def run(self, task: Task, keys: Iterable[int]) -> Iterator[Outcome]:
        """Outcomes in completion order, one per key drawn."""

    @abstractmethod
    def status(self) -> str:
        """What runs now, for the progress line: e.g. '2 workers on 1 node'."""


def open_engine(options: EngineOptions, workers: int | None) -> Engine:
    """The engine `options` names. `workers`: keys run at once (None: the engine's default, 1 for the
    local pool, the cluster's capacity for Ray)."""
    if options.kind == "ray":
        from pipelines.generation.ray_engine import RayEngine

        return RayEngine(options, workers)
    from pipelines.generation.local_engine import LocalEngine

    return LocalEngine(1 if workers is None else workers)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
