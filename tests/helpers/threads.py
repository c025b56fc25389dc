"""Thread fan-out for tests: run a call in several threads at once and re-raise what any of
them raised (``Future.result()`` does), instead of threads started by hand that collect their
errors in a list the test must remember to check.

Every call gets a thread of its own (the calls wait for each other at a start barrier, so no
pool thread serves two calls): Django's connections and poolkit's pin state are per thread.
A call that is still running after ``timeout`` seconds fails the test; it cannot hang it.
:class:`BackgroundSampler` is the other shape: a loop beside the test until it is stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Generous: a gating test bounds a hang, it does not time anything.
TIMEOUT_S = 120.0


class Running(Generic[T]):
    """The calls of :func:`running`: their futures while the block runs, ``results`` (in call
    order) after it."""

    def __init__(self, futures: list[Future[T]]) -> None:
        self.futures = futures
        self.results: list[T] = []


@contextmanager
def running(target: Callable[[int], T], count: int = 1, *,
            timeout: float = TIMEOUT_S) -> Iterator[Running[T]]:
    """``target(0)`` .. ``target(count - 1)``, each in its own thread, while the block runs
    (the block does what the threads must overlap with). Leaving the block waits for every
    call (``timeout`` in all) and re-raises the first error, in call order; an error of the
    block itself wins."""
    start = threading.Barrier(count)

    def call(index: int) -> T:
        start.wait(timeout=timeout)
        return target(index)

    executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="fan-out")
    calls = Running([executor.submit(call, index) for index in range(count)])
    try:
        yield calls
    finally:
        # Whatever the block did, the threads end before the test goes on (or tears down).
        _, stuck = wait(calls.futures, timeout=timeout)
        executor.shutdown(wait=False, cancel_futures=True)
    if stuck:
        raise AssertionError(f"{len(stuck)} of {count} threads still running after {timeout} s")
    calls.results = [future.result() for future in calls.futures]


def fan_out(target: Callable[[int], T], count: int, *, timeout: float = TIMEOUT_S) -> list[T]:
    """``target(0)`` .. ``target(count - 1)`` in ``count`` threads at once; their results in
    call order, or the first error re-raised."""
    with running(target, count, timeout=timeout) as calls:
        pass
    return calls.results


class BackgroundSampler:
    """A daemon thread running :meth:`_run` between ``__enter__`` and ``__exit__``;
    :meth:`_run` loops until ``self._stop`` is set. For what runs *beside* a test (samplers,
    pollers) and reports what it saw as figures, rather than calls whose errors fail it."""

    name = "sampler"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        raise AssertionError("a sampler defines _run")
