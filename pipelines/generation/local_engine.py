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
        running: set[Future[Outcome]] = set()  # as last seen: the futures a dead worker may have been running
        try:
            while True:
                if not self._fill(pool, pending, keys):  # the pool broke since the last wait
                    yield from self._lost(pending, running)
                    pool = self._replace(pool)
                    continue
                if not pending:
                    return
                running = {f for f in pending if f.running()}
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for future in finished:
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    del pending[future]
                    yield outcome
                if broken:  # every other pending future fails the same way
                    yield from self._lost(pending, running)
                    pool = self._replace(pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _replace(self, pool: ProcessPoolExecutor) -> ProcessPoolExecutor:
        pool.shutdown(wait=True, cancel_futures=True)
        return self._new()

    def _lost(self, pending: dict[Future[Outcome], int], running: set[Future[Outcome]]) -> Iterator[Outcome]:
        """Keys of a broken pool back in line. A key that was running when a worker died gets a strike (every
        key does when none was seen running, so a pool that keeps breaking cannot loop forever)."""
        lost = sorted((key, future in running) for future, key in pending.items())
        pending.clear()
        blame_all = not any(was_running for _, was_running in lost)
        for key, was_running in lost:
            self.deaths[key] += was_running or blame_all
            if self.deaths[key] > WORKER_DEATH_RETRIES:
                yield Failed(key, f"the worker running it died {self.deaths[key]} times (killed, or out of memory)")
            else:
                self.retry.append(key)

    def _fill(self, pool: ProcessPoolExecutor, pending: dict[Future[Outcome], int], keys: Iterator[int]) -> bool:
        """Submit keys (retries first) up to the queue depth; False when the pool turns out to be broken."""
        while len(pending) < QUEUED_PER_WORKER * self.workers:
            key = self.retry.popleft() if self.retry else next(keys, None)
            if key is None:
                return True
            try:
                pending[pool.submit(_work, key)] = key
            except BrokenProcessPool:
                self.retry.appendleft(key)
                return False
        return True


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
