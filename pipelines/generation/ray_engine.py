"""The Ray engine: each key a Ray task on a cluster, results back through the object store.

`RayEngine(options, workers)` joins the cluster at `options.address`, or starts a local Ray instance
with `workers` CPUs (all cores when None). Each key becomes one task reserving
`cpus_per_episode` CPUs and `gpus_per_episode` GPUs (fractions let several small hosts share a
GPU); Ray schedules them on whatever nodes have room. The task object is put in the object store
once; a task's value (an episode's Arrow tables) comes back through it, and the driver, the only
consumer, stays the pack's single writer.

Faults: a task whose worker process or node dies is retried by Ray (`max_retries`); exceptions
raised by the task itself are caught in the worker and returned as `Failed`, never retried (the
same key would fail the same way). Closing `run` cancels what is in flight. When the driver dies,
Ray ends its job and kills the job's workers; a local instance the driver started dies with it
(Ray's two per-node agent processes of that instance exit by themselves about a minute later: they
try to report the raylet's death to the dead GCS first, with a fixed 60 s timeout).

The connection is process-wide (`ray.init`) and stays open after a run, so several runs in one
process (`esper compare`'s packs) share it; a local instance is restarted when a run asks for a
different size. Ray is an optional extra: `pip install esper-telemetry[ray]`.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from pipelines.generation.capacity import cores
from pipelines.generation.engine import (
    QUEUED_PER_WORKER,
    WORKER_DEATH_RETRIES,
    Engine,
    EngineError,
    EngineOptions,
    Failed,
    Outcome,
    Task,
    call,
    describe,
    plural,
)

INSTALL_HINT = "pip install 'esper-telemetry[ray]'"
TASK_NAME = "esper-episode"  # task `esper-episode-<index>`: its worker's process title is `ray::esper-episode-<index>`
_started_cpus: int | None = None  # CPUs of the local instance this process started, if it started one


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EngineError(f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


class RayEngine(Engine):
    name = "ray"

    def __init__(self, options: EngineOptions, workers: int | None) -> None:
        self.options, self.workers = options, workers
        if options.address is not None:
            _probe(options.address)  # seconds, where Ray alone would retry for many minutes
        self.ray = import_ray()
        self._connect()

    # ---- the cluster ---------------------------------------------------------------------------
    def _connect(self) -> None:
        global _started_cpus
        ray, address = self.ray, self.options.address
        if ray.is_initialized():
            if address is None and _started_cpus in (None, self._local_cpus()):
                return  # this process's connection (a local instance of this size, or one its caller made)
            if address is not None and _started_cpus is None and address == _current_address(ray):
                return
            ray.shutdown()  # our local instance of another size, or another cluster than this run names
        _started_cpus = None
        try:
            if address is None:
                ray.init(address="local", num_cpus=self._local_cpus(), include_dashboard=False,
                         logging_level=logging.WARNING)  # "local": a new instance, never one found running
                _started_cpus = self._local_cpus()
            else:
                ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise EngineError(f"cannot start or join {where}: {' '.join(str(exc).split())[:300]}"
                              + ("; expected the address of a running cluster (`ray start --head` prints it)"
                                 if address else "")) from None

    def _local_cpus(self) -> int:
        return self.workers if self.workers is not None else cores()

    def _slots(self) -> int:
        """Episodes the cluster can run at once now, with what each reserves (at least one)."""
        have = self.ray.cluster_resources()
        slots = int(have.get("CPU", 0) // self.options.cpus_per_episode)
        if self.options.gpus_per_episode > 0:
            slots = min(slots, int(have.get("GPU", 0) // self.options.gpus_per_episode))
        if self.workers is not None:
            slots = min(slots, self.workers)
        return max(1, slots)

    def status(self) -> str:
        """Worker slots of the nodes alive now (what episodes can run at once) and those nodes."""
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return f"{plural(self._slots(), 'worker')} on {plural(nodes, 'node')}"

    # ---- running -------------------------------------------------------------------------------
    def run(self, task: Task, keys: Iterable[int]) -> Iterator[Outcome]:
        ray = self.ray
        shipped = ray.put((uuid.uuid4().hex, task))
        remote = ray.remote(_run_task)
        pending: dict[Any, int] = {}
        queue = iter(keys)
        try:
            self._fill(remote, shipped, pending, queue)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    yield self._get(ref, pending.pop(ref))
                self._fill(remote, shipped, pending, queue)
        finally:
            for ref in pending:
                ray.cancel(ref)  # a running episode is interrupted, its worker kept

    def _fill(self, remote: Any, shipped: Any, pending: dict[Any, int], queue: Iterator[int]) -> None:
        # Ray runs every submitted task the cluster has room for, so a --workers cap below the cluster's
        # size holds only if no more are submitted; without a cap, keys queued ahead keep workers busy.
        ahead = 1 if self.workers is not None else QUEUED_PER_WORKER
        room = ahead * self._slots() - len(pending)
        for _ in range(room):
            key = next(queue, None)
            if key is None:
                break
            pending[remote.options(
                name=f"{TASK_NAME}-{key}", num_cpus=self.options.cpus_per_episode,
                num_gpus=self.options.gpus_per_episode, max_retries=WORKER_DEATH_RETRIES, retry_exceptions=False,
            ).remote(shipped, key)] = key

    def _get(self, ref: Any, key: int) -> Outcome:
        """The task's outcome; a system failure Ray gave up on becomes `Failed` with what happened."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayTaskError as exc:  # raised outside the task's own code: unpickling, imports
            return Failed(key, describe(exc.cause if isinstance(exc.cause, BaseException) else exc))
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.OutOfMemoryError,
                exceptions.ObjectLostError, exceptions.LocalRayletDiedError) as exc:
            return Failed(key, f"the worker running it died {WORKER_DEATH_RETRIES + 1} times "
                               f"({type(exc).__name__}: killed, out of memory, or its node was lost)")
        except exceptions.RayError as exc:  # anything else Ray could not deliver
            return Failed(key, describe(exc))


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds on an address where nothing listens: Ray itself retries such a one for many minutes."""
    if "://" in address or address == "auto":
        return  # a Ray client address, or Ray's own search for a running cluster
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--address {address!r}: expected HOST:PORT of a Ray cluster's head (e.g. head-node:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise EngineError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); expected "
                          "the address `ray start --head` printed, reachable from this machine") from None


def _current_address(ray: Any) -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - an older Ray without it: treat as another cluster
        return None


# ---- in the worker process -------------------------------------------------------------------------

_ready: tuple[str, Task] | None = None  # the last task this worker set up, by its run's token


def _run_task(shipped: tuple[str, Task], key: int) -> Outcome:
    """One key in a Ray worker: the task is set up once per worker process and run, then reused."""
    global _ready
    token, task = shipped
    if _ready is None or _ready[0] != token:
        try:
            task.setup()
        except Exception as exc:  # noqa: BLE001 - reported with the key, like an error of the task
            return Failed(key, f"setting up the worker: {describe(exc)}")
        _ready = (token, task)
    return call(_ready[1], key)
