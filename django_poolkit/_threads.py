"""Work in a daemon thread, answered through a ``concurrent.futures.Future``.

For waits poolkit must bound although the work itself may never end (a query to a server
stopped with ``SIGSTOP`` keeps its socket open, and libpq has no read deadline): the caller
waits on the future with a timeout and moves on. A daemon thread, not a
``ThreadPoolExecutor``: the executor's workers are joined at interpreter exit, so one stuck
query would hang the end of a management command.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["in_daemon_thread"]

T = TypeVar("T")


def in_daemon_thread(work: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    """Start ``work`` in a new daemon thread; its result (or exception) completes the
    returned future."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as error:  # handed to whoever waits on the future
            future.set_exception(error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
