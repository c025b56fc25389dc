"""Configuration F: a plain WSGI app, no Django, one psycopg connection per server thread.

This is the ceiling: the same queries over a connection that is opened once per thread and
never checked, reset or returned. The gap between it and B is Django's own per-request cost.
Connections are in autocommit, as Django's are, so each query is one server transaction.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

from .queries import GROUP_SQL, PK_SQL, RANGE_SQL, pick_group, pick_pk

_local = threading.local()
_DSN = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/poolkit_bench")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _connection() -> psycopg.Connection[Any]:
    connection: psycopg.Connection[Any] | None = getattr(_local, "connection", None)
    if connection is None or connection.closed:
        connection = psycopg.connect(_DSN, autocommit=True, application_name="bench-F")
        _local.connection = connection
    return connection


def _pk() -> bytes:
    row = _connection().execute(PK_SQL, (pick_pk(),)).fetchone()
    if row is None:
        raise LookupError("bench_item is empty: run the harness to fill it")
    return str(row[1]).encode()


def _three() -> bytes:
    connection = _connection()
    start = pick_pk()
    row = connection.execute(PK_SQL, (start,)).fetchone()
    names = [r[1] for r in connection.execute(RANGE_SQL, (start,)).fetchall()]
    counted = connection.execute(GROUP_SQL, (pick_group(),)).fetchone()
    name = row[1] if row else ""
    count = counted[0] if counted else 0
    return f"{name} {len(names)} {count}".encode()


_ROUTES: dict[str, Callable[[], bytes]] = {"/pk/": _pk, "/three/": _three}


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Serve ``/pk/`` and ``/three/``; 404 for anything else."""
    view = _ROUTES.get(environ.get("PATH_INFO", ""))
    if view is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    body = view()
    start_response("200 OK", [("Content-Type", "text/plain"),
                               ("Content-Length", str(len(body)))])
    return [body]
