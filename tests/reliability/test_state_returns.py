"""Scenarios 8 and 9: connections returned dirty, and a disconnect in the middle of a
transaction.

8. Each dirty state is left on a connection of a one-connection pool, which then goes back;
   the next checkout must be idle and see none of the uncommitted work, and a connection that
   cannot be cleaned (a command still running, a rollback that fails) must be discarded.
9. The server process behind an ``atomic()`` block is terminated, or the network cuts its
   stream, between two writes: the error must reach the caller (no silent retry: a sequence
   counts every attempt), no row of the transaction may survive, and the next request works.

Both run on the main server's test database: they break single connections, never the server.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from django.db import InterfaceError, OperationalError, connection, connections, transaction
from psycopg.pq import TransactionStatus
from sqlalchemy import text

from django_poolkit import get_engine, pool_stats
from testproject.demo.models import Note

from ..helpers.backend import extra_alias, terminate
from ..helpers.results import record
from ..helpers.state import ROWS, SEQUENCE, Warnings, cut_streams, sequence_calls
from ..helpers.tcpproxy import proxy_to

pytestmark = pytest.mark.django_db(transaction=True)


def _one_connection(settings: Any, alias: str = "default") -> None:
    settings.POOLKIT = {"DATABASES": {alias: {"pool_size": 1, "max_overflow": 0,
                                              "pool_timeout": 5}}}


# -- 8. dirty returns ------------------------------------------------------------------------


def _insert(cursor: Any, tag: str) -> None:
    cursor.execute(f"INSERT INTO {ROWS} (tag) VALUES (%s)", (tag,))


def _intrans(fairy: Any, admin: Any) -> Any:
    cursor = fairy.driver_connection.cursor()
    _insert(cursor, "uncommitted")
    cursor.execute("CREATE TABLE relb_uncommitted_ddl (x int)")
    return cursor


def _inerror(fairy: Any, admin: Any) -> Any:
    cursor = fairy.driver_connection.cursor()
    _insert(cursor, "before the error")
    with pytest.raises(psycopg.errors.DivisionByZero):
        cursor.execute("SELECT 1 / 0")
    return cursor


def _copy_in(fairy: Any, admin: Any) -> Any:
    cursor = fairy.driver_connection.cursor()
    manager = cursor.copy(f"COPY {ROWS} (tag) FROM STDIN")
    copy = manager.__enter__()  # never finished: the server waits for more data
    copy.write_row(("copied",))
    return manager


def _copy_out(fairy: Any, admin: Any) -> Any:
    cursor = fairy.driver_connection.cursor()
    manager = cursor.copy("COPY (SELECT repeat('x', 100) FROM generate_series(1, 100000)) "
                          "TO STDOUT")
    copy = manager.__enter__()
    assert copy.read()  # one block read, most of the result still coming
    return manager


def _stream(fairy: Any, admin: Any) -> Any:
    cursor = fairy.driver_connection.cursor()
    rows_ = cursor.stream("SELECT generate_series(1, 100000)")
    assert next(rows_) == (1,)  # a result stream abandoned after its first row
    return rows_


def _server_cursor(fairy: Any, admin: Any) -> Any:
    cursor = fairy.driver_connection.cursor(name="relb_named")
    cursor.execute("SELECT generate_series(1, 1000)")
    assert len(cursor.fetchmany(10)) == 10
    _insert(fairy.driver_connection.cursor(), "beside a server-side cursor")
    return cursor


def _rollback_fails(fairy: Any, admin: Any) -> Any:
    cursor = fairy.driver_connection.cursor()
    _insert(cursor, "doomed")
    # The server process ends under the open transaction: the checkin's rollback fails.
    terminate(admin, [fairy.driver_connection.info.backend_pid])
    return cursor


def _orm_manual_transaction(fairy: Any, admin: Any) -> Any:
    transaction.set_autocommit(False)
    with connection.cursor() as cursor:
        _insert(cursor, "orm, autocommit off")
    return None


def _orm_iterator(fairy: Any, admin: Any) -> Any:
    # An unfinished .iterator(): Django declares a WITH HOLD cursor in autocommit.
    Note.objects.bulk_create([Note(title=f"relb {number}") for number in range(3)])
    iterator = Note.objects.filter(title__startswith="relb ").iterator(chunk_size=1)
    next(iterator)
    return iterator


# name -> (how to make it dirty, through the ORM?, must be discarded?)
DIRTY: dict[str, tuple[Callable[[Any, Any], Any], bool, bool]] = {
    "open transaction, uncommitted insert and DDL": (_intrans, False, False),
    "failed transaction (INERROR)": (_inerror, False, False),
    "COPY FROM STDIN in progress": (_copy_in, False, True),
    "COPY TO STDOUT half read": (_copy_out, False, True),
    "result stream abandoned": (_stream, False, True),
    "server-side cursor open in a transaction": (_server_cursor, False, False),
    "rollback fails (server process gone)": (_rollback_fails, False, True),
    "ORM: autocommit off, uncommitted insert": (_orm_manual_transaction, True, False),
    "ORM: unfinished .iterator() (WITH HOLD cursor)": (_orm_iterator, True, False),
}


def _return_dirty(name: str, admin: Any) -> tuple[int, Any]:
    """Leave the pool's only connection in state ``name`` and give it back; its pid."""
    make_dirty, through_orm, _ = DIRTY[name]
    if through_orm:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        kept = make_dirty(None, admin)
        connection.close()  # the end of the request
        return pid, kept
    fairy = get_engine().raw_connection()
    pid = fairy.driver_connection.info.backend_pid
    try:
        kept = make_dirty(fairy, admin)
    except BaseException:
        fairy.invalidate()  # a broken test must not leave the pool's connection out
        raise
    fairy.close()  # the checkin
    return pid, kept


def _next_checkout(admin: Any) -> dict[str, Any]:
    """What the next user of the pool gets: its pid, its status before any statement, and
    what it can see of the previous user's work."""
    fairy = get_engine().raw_connection()
    try:
        driver = fairy.driver_connection
        status = driver.info.transaction_status
        cursor = driver.cursor()
        cursor.execute(f"SELECT (SELECT count(*) FROM {ROWS}), "
                       "to_regclass('relb_uncommitted_ddl') IS NOT NULL, "
                       "(SELECT count(*) FROM pg_cursors), pg_backend_pid()")
        visible, ddl, cursors, pid = cursor.fetchone()
        driver.rollback()
    finally:
        fairy.close()
    return {"idle": status == TransactionStatus.IDLE, "visible": visible + int(ddl),
            "cursors": cursors, "pid": pid}


def test_scenario_8_dirty_returns(settings, rows, admin):
    _one_connection(settings)
    results: dict[str, dict[str, Any]] = {}
    kept: list[Any] = []  # the abandoned copies and streams stay referenced until the end
    with Warnings() as logged:
        for name, (_, _, must_discard) in DIRTY.items():
            pid, leftover = _return_dirty(name, admin)
            kept.append(leftover)
            after = _next_checkout(admin)
            stats = pool_stats()
            results[name] = {
                "idle": after["idle"], "uncommitted_visible": after["visible"],
                "cursors_left": after["cursors"], "discarded": after["pid"] != pid,
                "must_discard": must_discard, "warnings": len(logged.take()),
                "checked_out_after": stats.pool_checked_out,
            }
            rows.execute(f"DELETE FROM {ROWS}")
    with warnings.catch_warnings():
        # The abandoned client-side objects know nothing of the reset: they warn when freed.
        warnings.simplefilter("ignore", ResourceWarning)
        del kept
        gc.collect()
    Note.objects.filter(title__startswith="relb ").delete()
    connection.close()
    states = len(results)
    idle = sum(result["idle"] for result in results.values())
    visible = sum(result["uncommitted_visible"] for result in results.values())
    cursors = sum(result["cursors_left"] for result in results.values())
    wrong_fate = [name for name, result in results.items()
                  if result["must_discard"] and not result["discarded"]]
    reused = [name for name, result in results.items() if not result["discarded"]]
    warned = {name: result["warnings"] for name, result in results.items()}
    checked_out = max(result["checked_out_after"] for result in results.values())
    met = (idle == states and visible == 0 and cursors == 0 and not wrong_fate
           and checked_out == 0)
    record("8 dirty returns",
           bar="next checkout idle 100 %, uncommitted work visible 0, cursors left 0, "
               "unusable ones discarded 100 %, checked out afterwards 0",
           met=met, states=states, next_checkout_idle=f"{idle}/{states}",
           uncommitted_visible=visible, cursors_left=cursors,
           discarded=sorted(set(results) - set(reused)), reused=reused,
           unusable_reused=wrong_fate, warnings_per_state=warned,
           checked_out_after=checked_out)
    assert idle == states, results
    assert visible == 0, results
    assert cursors == 0, results
    assert not wrong_fate, results
    assert checked_out == 0
    # Connections that could be cleaned are kept (a rollback is cheaper than a reconnect).
    assert "open transaction, uncommitted insert and DDL" in reused


# -- 9. mid-transaction disconnect -------------------------------------------------------------


def _nextval(cursor: Any) -> None:
    cursor.execute(f"SELECT nextval('{SEQUENCE}')")


def _orm_transaction(alias: str, tag: str, between: Callable[[int], None]) -> float:
    """Two writes in ``atomic()`` with ``between(pid)`` run after the first; how long the
    failing statement took to raise (it must raise)."""
    wrapper = connections[alias]
    started = 0.0

    def request() -> None:
        nonlocal started
        with transaction.atomic(using=alias), wrapper.cursor() as cursor:
            _nextval(cursor)
            _insert(cursor, f"{tag} 1")
            cursor.execute("SELECT pg_backend_pid()")
            between(cursor.fetchone()[0])
            started = time.monotonic()
            _nextval(cursor)
            _insert(cursor, f"{tag} 2")

    with pytest.raises((OperationalError, InterfaceError)):
        request()
    took = time.monotonic() - started
    wrapper.close()  # the end of the failed request
    return took


def _orm_next_request(alias: str, tag: str) -> bool:
    wrapper = connections[alias]
    try:
        with transaction.atomic(using=alias), wrapper.cursor() as cursor:
            _insert(cursor, f"{tag} next")
        return True
    finally:
        wrapper.close()


def test_scenario_9_mid_transaction_disconnect(settings, rows, admin):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 0,
                                                  "pool_timeout": 5}}}
    outcomes: dict[str, dict[str, Any]] = {}

    def check(name: str, took: float, next_ok: bool, calls_before: int) -> None:
        calls = sequence_calls(rows) - calls_before
        committed = rows.execute(f"SELECT count(*) FROM {ROWS} WHERE tag LIKE %s",
                                 (f"{name}%",)).fetchone()[0]
        outcomes[name] = {"error_after_ms": round(took * 1000, 1), "attempts": calls,
                          "rows_committed": committed, "next_request_ok": next_ok}

    # ORM, the server process terminated between the two writes.
    calls = sequence_calls(rows)
    took = _orm_transaction("default", "orm-terminated",
                            lambda pid: terminate(admin, [pid]))
    check("orm-terminated", took, _orm_next_request("default", "after orm-terminated"), calls)

    # SQLAlchemy on the same pool, the server process terminated between the two writes.
    calls = sequence_calls(rows)
    started = 0.0

    def sqlalchemy_request() -> None:
        nonlocal started
        with get_engine().begin() as sa:
            sa.execute(text(f"SELECT nextval('{SEQUENCE}')"))
            sa.execute(text(f"INSERT INTO {ROWS} (tag) VALUES ('sqlalchemy-terminated 1')"))
            terminate(admin, [sa.execute(text("SELECT pg_backend_pid()")).scalar()])
            started = time.monotonic()
            sa.execute(text(f"SELECT nextval('{SEQUENCE}')"))
            sa.execute(text(f"INSERT INTO {ROWS} (tag) VALUES ('sqlalchemy-terminated 2')"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        sqlalchemy_request()
    took = time.monotonic() - started
    with get_engine().begin() as sa:
        sa.execute(text(f"INSERT INTO {ROWS} (tag) VALUES ('after sqlalchemy-terminated')"))
    check("sqlalchemy-terminated", took, True, calls)

    # ORM through a TCP proxy that cuts the stream between the two writes.
    host = connections.settings["default"]["HOST"] or "127.0.0.1"
    port = int(connections.settings["default"]["PORT"] or 5432)
    with proxy_to(host, port) as proxy, extra_alias("relb_proxied", HOST="127.0.0.1",
                                                    PORT=str(proxy.port)):
        _one_connection(settings, "relb_proxied")
        calls = sequence_calls(rows)
        took = _orm_transaction("relb_proxied", "orm-cut", lambda pid: cut_streams(proxy))
        check("orm-cut", took, _orm_next_request("relb_proxied", "after orm-cut"), calls)
        stats = pool_stats("relb_proxied")
        assert stats.pool_checked_out == 0

    surfaced = len(outcomes)  # every case raised (pytest.raises above)
    retried = sum(outcome["attempts"] != 1 for outcome in outcomes.values())
    partial = sum(outcome["rows_committed"] for outcome in outcomes.values())
    duplicates = rows.execute(f"SELECT count(*) - count(DISTINCT tag) FROM {ROWS}").fetchone()[0]
    next_ok = sum(outcome["next_request_ok"] for outcome in outcomes.values())
    after = rows.execute(f"SELECT count(*) FROM {ROWS} WHERE tag LIKE 'after %'").fetchone()[0]
    met = retried == 0 and partial == 0 and duplicates == 0 and next_ok == after == surfaced
    record("9 mid-transaction disconnect",
           bar="error surfaces 100 %, silent retries 0, partial or duplicate rows 0, "
               "next request succeeds 100 %",
           met=met, cases=surfaced, errors_surfaced=f"{surfaced}/{len(outcomes)}",
           silent_retries=retried, partial_rows=partial, duplicate_rows=duplicates,
           next_request_ok=f"{after}/{surfaced}",
           error_after_ms=max(outcome["error_after_ms"] for outcome in outcomes.values()),
           per_case=outcomes)
    assert retried == 0, outcomes
    assert partial == 0, outcomes
    assert duplicates == 0
    assert next_ok == after == surfaced, outcomes
