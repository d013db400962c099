"""The local engine: a pool of spawned worker processes on this machine (in-process with one worker).

Workers are spawned (never forked: torch and threads do not survive a fork) and each is set up once
with the task (`Task.setup`). A worker that dies breaks Python's pool as a whole; the engine then
starts a new pool and resubmits every key that had not finished, counting a death against the keys
that were running (up to `WORKER_DEATH_RETRIES`), so one killed worker costs its episode's time,
not the run.

A run killed with SIGKILL cannot shut its pool down, and idle workers would wait for work forever:
each worker watches the driver whose PID was recorded when the pool was made (never read in the
worker, where the driver may already be dead and the parent is then init) and exits when it goes.
The check runs before the task is unpickled and set up, so a worker spawned just before the kill
leaves within a poll interval of finishing its interpreter start-up.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import active_children, get_context

from pipelines.generation.engine import (
    QUEUED_PER_WORKER,
    WORKER_DEATH_RETRIES,
    Engine,
    Failed,
    Outcome,
    Task,
    call,
    describe,
    plural,
)

WATCH_INTERVAL = 0.2  # seconds between a worker's checks that its driver is alive


class LocalEngine(Engine):
    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def status(self) -> str:
        live = len(active_children()) if self.workers > 1 else 1
        return f"{plural(min(live, self.workers), 'worker')} on 1 node"

    def run(self, task: Task, keys: Iterable[int]) -> Iterator[Outcome]:
        workers = min(self.workers, len(keys)) if isinstance(keys, Sized) else self.workers
        if workers <= 1:
            yield from _in_process(task, keys)
        else:
            yield from _Pool(task, workers).run(iter(keys))


def _in_process(task: Task, keys: Iterable[int]) -> Iterator[Outcome]:
    ready = False
    for key in keys:
        if not ready:
            task.setup()
            ready = True
        yield call(task, key)


class _Pool:
    """Keys through a ProcessPoolExecutor, replaced whenever a worker death breaks it."""

    def __init__(self, task: Task, workers: int) -> None:
        self.task_bytes = pickle.dumps(task)  # pickled once, unpickled in each worker after its watchdog starts
        self.workers = workers
        self.deaths: Counter[int] = Counter()
        self.retry: deque[int] = deque()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.task_bytes, os.getpid()))

    def run(self, keys: Iterator[int]) -> Iterator[Outcome]:
        pool = self._new()
        pending: dict[Future[Outcome], int] = {}
        try:
            self._fill(pool, pending, keys)
            while pending:
                running = {f for f in pending if f.running()}
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                lost = []
                for future in finished:
                    key = pending.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        lost.append((key, future in running))
                if lost:  # the pool is broken: every pending future fails the same way
                    lost += [(key, future in running) for future, key in pending.items()]
                    pending.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    yield from self._requeue(lost)
                    pool = self._new()
                self._fill(pool, pending, keys)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _requeue(self, lost: list[tuple[int, bool]]) -> Iterator[Outcome]:
        """Keys of a broken pool back in line; one that was running when a worker died gets a strike."""
        for key, was_running in sorted(lost):
            self.deaths[key] += was_running
            if self.deaths[key] > WORKER_DEATH_RETRIES:
                yield Failed(key, f"the worker running it died {self.deaths[key]} times (killed, or out of memory)")
            else:
                self.retry.append(key)

    def _fill(self, pool: ProcessPoolExecutor, pending: dict[Future[Outcome], int], keys: Iterator[int]) -> None:
        while len(pending) < QUEUED_PER_WORKER * self.workers:
            key = self.retry.popleft() if self.retry else next(keys, None)
            if key is None:
                return
            pending[pool.submit(_work, key)] = key


# ---- in the worker process -------------------------------------------------------------------------

_TASK: Task | None = None
_SETUP_ERROR: str | None = None


def _init_worker(task_bytes: bytes, driver: int) -> None:
    """Watch the driver first (it may be gone already), then unpickle and set up the task."""
    global _TASK, _SETUP_ERROR
    if os.getppid() != driver:
        os._exit(1)
    threading.Thread(target=_exit_with_driver, args=(driver,), daemon=True, name="driver-watch").start()
    try:
        _TASK = pickle.loads(task_bytes)
        _TASK.setup()
    except Exception as exc:  # noqa: BLE001 - every key is then reported failed with this reason
        _SETUP_ERROR = f"setting up the worker: {describe(exc)}"


def _exit_with_driver(driver: int) -> None:
    while os.getppid() == driver:
        time.sleep(WATCH_INTERVAL)
    os._exit(1)


def _work(key: int) -> Outcome:
    if _SETUP_ERROR is not None or _TASK is None:
        return Failed(key, _SETUP_ERROR or "the worker was not set up")
    return call(_TASK, key)
