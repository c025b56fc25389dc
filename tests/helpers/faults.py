"""Shared tools of the fault-injection scenarios 1-7 (their fixtures ``scratch`` and
``unblocked`` are in ``tests/reliability/conftest.py``): a scratch cluster to break, pooled
aliases added for one test, steady load with a timeline of every request, and the oracles
(server-side connection counts, client-side open connections, connection attempts).

Times are ``time.monotonic()`` seconds throughout, so events of different threads compare.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from sqlalchemy import event

from django_poolkit import conf
from django_poolkit.engines import engine_registry

from .threads import BackgroundSampler

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "scratch-cluster"
#: Part A's scratch cluster (part B uses 5450-5459); never the main server on 5432.
SCRATCH_PORT = 5440
POOLED = "django_poolkit.db.backends.postgresql"


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds rounded to 0.1 ms (what the RESULT lines carry)."""
    return None if seconds is None else round(seconds * 1000.0, 1)


# -- the scratch cluster ----------------------------------------------------------------------


@dataclass
class Scratch:
    """A throwaway PostgreSQL cluster of ``scripts/scratch-cluster``: safe to stop, restart,
    crash and pause."""

    port: int
    paused: set[int] = field(default_factory=set)

    @property
    def data(self) -> Path:
        return Path(f"/var/lib/postgresql/poolkit-scratch-{self.port}/data")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def run(self, command: str) -> None:
        """``scripts/scratch-cluster COMMAND PORT``; it waits until the cluster accepts
        connections (start, restart) or is down (stop)."""
        subprocess.run([str(SCRIPT), command, str(self.port)], check=True,
                       capture_output=True, timeout=90)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def accepts(self, timeout: int = 2) -> bool:
        """Whether a fresh connection gets a session (and answers a query) right now."""
        try:
            with psycopg.connect(self.dsn(), connect_timeout=timeout, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def backends(self, application_name_like: str) -> list[int]:
        with psycopg.connect(self.dsn(), connect_timeout=5, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name "
                                "LIKE %s ORDER BY pid", (application_name_like,)).fetchall()
        return [row[0] for row in rows]

    def pause(self, pid: int) -> None:
        """SIGSTOP one server process (a blackhole without root); :meth:`resume_all` and the
        ``scratch`` fixture's teardown always continue it."""
        self.paused.add(pid)
        os.kill(pid, signal.SIGSTOP)

    def resume_all(self) -> None:
        for pid in sorted(self.paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused.clear()

    def heal(self) -> None:
        """Whatever a test did: continue paused processes and make sure it runs."""
        self.resume_all()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(self.postmaster_pid(), signal.SIGCONT)
        self.run("start")


# -- aliases and settings ---------------------------------------------------------------------


def poolkit_with(databases: dict[str, dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """The test project's ``POOLKIT`` with per-alias pool settings (and other sections)."""
    base = dict(getattr(settings, "POOLKIT", {}))
    return {**base, "DATABASES": {**base.get("DATABASES", {}), **databases}, **sections}


@contextlib.contextmanager
def add_pooled_alias(name: str, **changes: Any) -> Iterator[str]:
    """A ``DATABASES`` alias on poolkit's pooled backend for one test: a copy of ``default``
    with ``changes`` (HOST, PORT, NAME...). It is added after pytest-django set the test up,
    so the ORM may use it from any thread; every thread must close its connection to it."""
    entry = copy.deepcopy(connections.settings["default"])
    entry.update({"ENGINE": POOLED, "TEST": {}, "CONN_MAX_AGE": 0, **changes})
    connections.settings[name] = entry
    conf.reload()
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            connections[name].close()
        with contextlib.suppress(AttributeError, KeyError):
            del connections[name]
        connections.settings.pop(name, None)
        engine_registry.dispose(name)
        conf.reload()


def app_name_like(alias: str) -> str:
    """The LIKE pattern of this process's pooled connections of ``alias`` (the default
    ``application_name`` template is ``poolkit:{alias}:{host}:{pid}``)."""
    return f"poolkit:{alias}:%:{os.getpid()}"


# -- oracles ----------------------------------------------------------------------------------


class OpenConnections:
    """Client-side ground truth of one engine's pool: DBAPI connections open right now (and
    the peak), connect attempts, and the server pids of connections the client closed.

    ``fail_every``: make every n-th connect attempt a real refused connect (the port is
    switched to one nothing listens on), a connect failure injected at the driver.
    """

    def __init__(self, engine: Any, *, fail_every: int = 0, refused_port: int = 0) -> None:
        self._lock = threading.Lock()
        self.attempts = 0
        self.injected = 0
        self.open: dict[int, int] = {}  # id(dbapi connection) -> server pid
        self.peak = 0
        self.closed_pids: set[int] = set()

        def do_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
            with self._lock:
                self.attempts += 1
                inject = fail_every > 0 and self.attempts % fail_every == 0
                if inject:
                    self.injected += 1
            if inject:
                cparams["port"] = refused_port

        def on_connect(dbapi_connection: Any, record_: Any) -> None:
            with self._lock:
                self.open[id(dbapi_connection)] = dbapi_connection.info.backend_pid
                self.peak = max(self.peak, len(self.open))

        def on_close(dbapi_connection: Any, *rest: Any) -> None:
            with self._lock:
                pid = self.open.pop(id(dbapi_connection), None)
                if pid is not None:
                    self.closed_pids.add(pid)

        event.listen(engine, "do_connect", do_connect)
        event.listen(engine, "connect", on_connect)
        event.listen(engine, "close", on_close)
        event.listen(engine, "close_detached", on_close)

    def closed(self) -> set[int]:
        with self._lock:
            return set(self.closed_pids)


class ServerCount(BackgroundSampler):
    """Samples, in a thread, how many server processes of a pool a server has
    (``pg_stat_activity`` rows whose ``application_name`` matches), as fast as it can.

    ``raw_peak`` counts every row. A backend whose client already closed its end can stay
    listed for a moment while it exits (the server is slower than the client under load), so
    ``peak`` leaves out the pids the client has closed (:class:`OpenConnections`): it counts
    the server processes of connections still open, or unknown to the client.
    """

    name = "server-count"

    def __init__(self, dsn: str, pattern: str, tracker: OpenConnections) -> None:
        self.dsn, self.pattern, self.tracker = dsn, pattern, tracker
        self.raw_peak = 0
        self.peak = 0
        self.samples = 0
        self.max_gap = 0.0
        self.error: BaseException | None = None
        super().__init__()

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                last = time.monotonic()
                while not self._stop.is_set():
                    pids = [row[0] for row in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
                        (self.pattern,))]
                    # Read after the sample: a connection's replacement can only be opened
                    # after the client closed it, so when both are listed the client's close
                    # happened before this point. (A pid closed during the query is left out
                    # although it was open; the client-side count covers that moment.)
                    closed = self.tracker.closed()
                    now = time.monotonic()
                    self.max_gap = max(self.max_gap, now - last)
                    last = now
                    self.samples += 1
                    self.raw_peak = max(self.raw_peak, len(pids))
                    self.peak = max(self.peak, len([pid for pid in pids if pid not in closed]))
        except BaseException as error:  # reported by the test
            self.error = error


# -- steady load ------------------------------------------------------------------------------


@dataclass
class Request:
    """One request of a :class:`Load`: when it started and ended, and what it got."""

    worker: int
    start: float
    end: float
    ok: bool
    pid: int | None = None
    backend_start: float | None = None
    error: str | None = None
    detail: str = ""

    @property
    def took(self) -> float:
        return self.end - self.start


class Load:
    """``workers`` threads each calling ``request()`` in a loop (pausing ``pause`` s after
    each call) until stopped, keeping a :class:`Request` per call. ``request`` returns the
    server pid that served it (or anything); an exception is a failed request.

    ``after`` runs in the worker after every call (e.g. ``connection.close()``, the end of a
    Django request).
    """

    def __init__(self, request: Callable[[], Any], *, workers: int, pause: float = 0.0,
                 after: Callable[[], None] | None = None) -> None:
        self.request, self.pause, self.after = request, pause, after
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(index,), daemon=True,
                                          name=f"load-{index}") for index in range(workers)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop and join the workers; the names of those still running after ``timeout``."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in self._threads if thread.is_alive()]

    def _work(self, index: int) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = self.request()
            except Exception as error:
                entry = Request(index, started, time.monotonic(), False,
                                error=type(error).__name__,
                                detail=str(error).strip().splitlines()[0][:200] if str(error)
                                else "")
            else:
                pid, backend_start = result if isinstance(result, tuple) else (result, None)
                entry = Request(index, started, time.monotonic(), True, pid, backend_start)
            finally:
                if self.after is not None:
                    with contextlib.suppress(Exception):
                        self.after()
            with self._lock:
                self.requests.append(entry)
            if self.pause:
                self._stop.wait(self.pause)

    def snapshot(self) -> list[Request]:
        with self._lock:
            return sorted(self.requests, key=lambda request: request.start)


class Availability(BackgroundSampler):
    """Polls the server directly (no pool) every ``interval`` s: a timeline of when it
    accepted connections, independent of what the pool under test does."""

    name = "availability"

    def __init__(self, cluster: Scratch, interval: float = 0.02) -> None:
        self.cluster, self.interval = cluster, interval
        self.timeline: list[tuple[float, bool]] = []
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self.cluster.accepts()
            self.timeline.append((time.monotonic(), ok))
            self._stop.wait(self.interval)

    def down_and_up(self, since: float) -> tuple[float, float]:
        """When the server stopped and started accepting again after ``since``: the first
        failed poll and the first success after it. A crash recovery can be shorter than one
        poll; then both are the first successful poll after ``since`` (which can only make a
        recovery time measured from it longer)."""
        down = next((at for at, ok in self.timeline if at >= since and not ok), None)
        if down is None:
            up = self.up_after(since)
            return up, up
        return down, self.up_after(down)

    def up_after(self, since: float) -> float:
        return next(at for at, ok in self.timeline if at >= since and ok)
