"""Bounded, ordered work on threads."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot:
    """One item's result: ``done`` is held until a worker has set ``value`` or ``error``."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.error: BaseException | None = None

    def result(self):
        self.done.acquire()
        if self.error is not None:
            raise self.error
        return self.value


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``threads`` threads, results in input order, at most ``2 * threads`` in flight.

    Unlike ``Executor.map`` it does not submit everything at once, so a unit never holds all its raw images.
    An item costs a lock and a queue entry, not an executor's future: at MP-16's small photos, where two of
    these run per image, futures took ~35 us an image of a process whose GIL is its limit. An error of ``fn``
    is raised where its result would have been; work already handed out is finished before this returns.
    """
    window = 2 * threads
    jobs: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        while (job := jobs.get()) is not None:
            slot, item = job
            try:
                slot.value = fn(item)
            except BaseException as exc:  # handed to the consumer
                slot.error = exc
            slot.done.release()

    workers: list[threading.Thread] = []
    pending: deque[_Slot] = deque()
    try:
        for item in items:
            if len(workers) < threads and len(workers) <= len(pending):  # a thread only when work waits
                workers.append(threading.Thread(target=work, name="ordered_map", daemon=True))
                workers[-1].start()
            slot = _Slot()
            jobs.put((slot, item))
            pending.append(slot)
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for _ in workers:
            jobs.put(None)
        for thread in workers:
            thread.join()


class Behind:
    """Calls run in order on a thread of their own, at most ``depth`` behind the caller.

    For work that lets go of the GIL (hashing, file writes, fsync): it then overlaps the caller's own. The first
    error is raised to the caller at its next call and at :meth:`close`; every call after it is dropped.
    """

    def __init__(self, depth: int = 64) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="behind", daemon=True)
        self._thread.start()

    def __call__(self, fn: Callable[..., object], *args: object) -> None:
        self._raise()
        self._queue.put((fn, args))

    def close(self) -> None:
        """Wait for every call made so far."""
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    item[0](*item[1])
                except BaseException as exc:  # handed to the caller
                    self._error = exc
