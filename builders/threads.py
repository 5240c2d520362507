"""Bounded, ordered work on threads."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``threads`` threads, results in input order, at most ``2 * threads`` in flight.

    Unlike ``Executor.map`` it does not submit everything at once, so a unit never holds all its raw images.
    """
    window = 2 * threads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
