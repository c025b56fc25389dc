"""The server side of the benchmark: the bench database, connection sampling and the
transaction counters.

Everything here connects to the maintenance database (``postgres``), never to the bench
database, so the harness's own queries are neither counted as a server connection of the
configuration under test nor as its transactions.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from .queries import GROUP_SIZE, ROWS

__all__ = ["ConnectionSampler", "Server", "database_name"]


def database_name(url: str) -> str:
    """The database a ``postgres://`` URL names."""
    return urlsplit(url).path.lstrip("/")


def _maintenance_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres"))


class Server:
    """The PostgreSQL server as the harness sees it, through one autocommit connection to
    the maintenance database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = database_name(url)
        self.connection = psycopg.connect(_maintenance_url(url), autocommit=True,
                                          application_name="bench-harness")

    def close(self) -> None:
        """Close the harness's connection."""
        self.connection.close()

    def version(self) -> str:
        """``server_version`` (e.g. ``15.20 (Debian 15.20-0+deb12u1)``)."""
        row = self.connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def prepare_database(self) -> None:
        """Create the bench database if missing and (re)fill its table idempotently."""
        exists = self.connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (self.name,)).fetchone()
        if not exists:
            self.connection.execute(sql.SQL("CREATE DATABASE {}").format(
                sql.Identifier(self.name)))
        with psycopg.connect(self.url, autocommit=True, application_name="bench-harness") as db:
            count = None
            table = db.execute("SELECT to_regclass('bench_item')").fetchone()
            if table and table[0] is not None:
                row = db.execute("SELECT count(*) FROM bench_item").fetchone()
                count = row[0] if row else None
            if count != ROWS:
                db.execute("DROP TABLE IF EXISTS bench_item")
                db.execute('CREATE TABLE bench_item (id bigserial PRIMARY KEY, '
                           'name varchar(40) NOT NULL, "group" integer NOT NULL)')
                db.execute('INSERT INTO bench_item (name, "group") '
                           "SELECT 'item ' || n, (n - 1) / %s FROM generate_series(1, %s) n",
                           (GROUP_SIZE, ROWS))
                db.execute('CREATE INDEX bench_item_group ON bench_item ("group")')
                db.execute("ANALYZE bench_item")

    def connections(self) -> int:
        """Client connections to the bench database now."""
        row = self.connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend'", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def other_connections(self) -> int:
        """Client connections to every other database (other users of this server: how
        contended it was)."""
        row = self.connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname IS DISTINCT FROM %s "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def wait_for_no_connections(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is connected to the bench database (a stopped server's
        backends exit, and flush their statistics, a moment after its sockets close)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connections() == 0:
                return True
            time.sleep(0.05)
        return False

    def transactions(self) -> dict[str, int]:
        """``xact_commit``, ``xact_rollback`` and ``sessions`` (connections opened) of the
        bench database.

        Backends send their counts to the statistics system when they go idle (at most once
        a second) and when they exit, so read this after a second of quiet or once the
        server has stopped. ``pg_stat_clear_snapshot()`` makes the read current.
        """
        self.connection.execute("SELECT pg_stat_clear_snapshot()")
        row = self.connection.execute(
            "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database "
            "WHERE datname = %s", (self.name,)).fetchone()
        if row is None:
            raise LookupError(f"no pg_stat_database row for {self.name!r}")
        return {"commit": int(row[0]), "rollback": int(row[1]), "sessions": int(row[2])}

    def settled_transactions(self, quiet_s: float = 1.1, timeout_s: float = 15.0) -> dict[str, int]:
        """:meth:`transactions` once every backend has reported: after ``quiet_s`` seconds
        without load (an idle backend reports within a second), read until two reads a
        quarter of a second apart agree."""
        time.sleep(quiet_s)
        deadline = time.monotonic() + timeout_s
        last = self.transactions()
        while True:
            time.sleep(0.25)
            now = self.transactions()
            if now == last or time.monotonic() > deadline:
                return now
            last = now

    def statement_counters(self) -> str | None:
        """Why pg_stat_statements cannot count statements here, or None when it can.

        Its counters need ``shared_preload_libraries``, which only a server restart changes;
        this harness never restarts a server other people use.
        """
        row = self.connection.execute("SHOW shared_preload_libraries").fetchone()
        loaded = row[0] if row else ""
        if "pg_stat_statements" not in loaded:
            return ("pg_stat_statements is not in shared_preload_libraries (enabling it needs "
                    "a server restart): server work is counted in transactions")
        return None


class ConnectionSampler:
    """Counts the bench database's client connections whose ``application_name`` is LIKE
    ``application_name`` every ``interval_s`` seconds on a background thread while a load
    runs; ``peak`` is the largest count seen."""

    def __init__(self, url: str, application_name: str = "%", interval_s: float = 0.05) -> None:
        self._url = _maintenance_url(url)
        self._name = database_name(url)
        self._application_name = application_name
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0
        self.samples = 0
        self.error: str | None = None

    def _run(self) -> None:
        try:
            with psycopg.connect(self._url, autocommit=True,
                                 application_name="bench-sampler") as connection:
                query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                         "AND backend_type = 'client backend' AND application_name LIKE %s")
                while not self._stop.is_set():
                    row = connection.execute(query, (self._name,
                                                     self._application_name)).fetchone()
                    self.peak = max(self.peak, int(row[0]) if row else 0)
                    self.samples += 1
                    self._stop.wait(self._interval)
        except psycopg.Error as error:
            self.error = str(error)

    def __enter__(self) -> ConnectionSampler:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def describe(value: Any) -> str:
    """A short text for an exception or value, for the report."""
    return str(value).strip().splitlines()[-1][:300] if str(value).strip() else repr(value)
