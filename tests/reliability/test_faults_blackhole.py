"""Scenario 6: a blackholed server process (``SIGSTOP``: the socket stays open, nothing comes
back) behind an idle pooled connection, and behind a query in flight.

The caller must get an error or a fresh connection within the configured timeouts; no thread
may stay stuck beyond twice that; the pool slot must come back. Every server process paused
here is a scratch cluster's (port 5440), and is always continued.

Neither libpq nor psycopg has a client-side deadline for a server that keeps the socket open
and never answers, the ``socket`` pre-ping cannot tell a frozen idle server from an idle one,
and ``statement_timeout`` is enforced by the (frozen) server: what bounds both callers is
poolkit's ``client_timeout`` (docs/client-timeout.rst), which closes the connection when one
wait for the server's answer takes longer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.db import connections

from django_poolkit import get_engine, pool_stats

from ..helpers.faults import Scratch, add_pooled_alias, app_name_like, ms, poolkit_with
from ..helpers.results import record

POOL = {"pool_size": 2, "max_overflow": 1, "pool_timeout": 1, "connect_timeout": 2,
        "statement_timeout": 500, "client_timeout": 1}
#: The longest a caller may wait: one wait for the server's answer (client_timeout: the
#: statement_timeout is the server's, which a frozen server cannot enforce), or a slot plus a
#: fresh connect.
BOUND = max(POOL["client_timeout"], POOL["pool_timeout"] + POOL["connect_timeout"])
#: What the test asserts: a caller still waiting this long is hung (the paused process never
#: answers). Generous, so a loaded machine cannot fail it; the bar (BOUND) is reported.
HANG_S = 2 * BOUND + 30


def _caller(alias: str, pids: list[int], started: threading.Event) -> dict[str, Any]:
    """Run a request in a thread: its pid goes to ``pids`` before its query runs."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        began = time.monotonic()
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
                started.set()
                cursor.execute("SELECT pg_sleep(0.3)")
            outcome["result"] = "served"
        except Exception as error:
            outcome["result"] = type(error).__name__
        finally:
            started.set()
            outcome["took"] = time.monotonic() - began
            connections[alias].close()

    outcome["thread"] = threading.Thread(target=run, name="blackholed-caller")
    outcome["thread"].start()
    return outcome


def _watch(scratch: Scratch, outcome: dict[str, Any], began: float) -> dict[str, Any]:
    """Wait up to HANG_S for the caller; then continue the paused processes and let it
    finish. A caller still running then is hung; one that took over 2x the bound is
    reported as stuck (the bar), not failed."""
    thread: threading.Thread = outcome["thread"]
    thread.join(timeout=max(0.0, began + HANG_S - time.monotonic()))
    hung = thread.is_alive()
    scratch.resume_all()
    thread.join(timeout=30)
    took = outcome.get("took")
    return {"result": outcome.get("result"), "hung": hung,
            "stuck_beyond_2x": hung or took is None or took > 2 * BOUND,
            "took_ms": ms(took) if not hung else None, "released_by_sigcont": hung}


def test_s6_blackholed_server_process(settings: Any, scratch: Scratch, unblocked: None) -> None:
    with add_pooled_alias("s6", HOST="127.0.0.1", PORT=str(scratch.port),
                          NAME="postgres") as alias:
        settings.POOLKIT = poolkit_with({alias: POOL})
        engine = get_engine(alias)
        held = [engine.connect() for _ in range(POOL["pool_size"])]
        for sa in held:
            sa.close()

        # a) every idle pooled connection's server process paused, then a request.
        for pid in scratch.backends(app_name_like(alias)):
            scratch.pause(pid)
        began = time.monotonic()
        idle = _watch(scratch, _caller(alias, [], threading.Event()), began)
        idle_slot = pool_stats(alias).pool_checked_out

        # b) the server process of a query in flight paused.
        pids: list[int] = []
        started = threading.Event()
        caller = _caller(alias, pids, started)
        started.wait(timeout=10)
        began = time.monotonic()
        if pids:
            scratch.pause(pids[0])
        in_flight = _watch(scratch, caller, began)
        in_flight_slot = pool_stats(alias).pool_checked_out

    idle["checked_out_after"], in_flight["checked_out_after"] = idle_slot, in_flight_slot
    met = all(not case["stuck_beyond_2x"] and case["took_ms"] is not None
              and case["took_ms"] <= BOUND * 1000 and case["checked_out_after"] == 0
              for case in (idle, in_flight))
    record("6 blackhole", bar=f"error or fresh connection within the configured timeouts "
           f"({BOUND:g} s); threads stuck beyond 2x: 0; slot recovered", met=met, pool=POOL,
           idle_connection=idle, in_flight_query=in_flight)
    # What holds on any machine: no caller hangs, each is served or gets an error, and its
    # slot comes back. The timing bar is the RESULT line's verdict.
    for case in (idle, in_flight):
        assert not case["hung"], case
        assert case["result"] is not None, case
        assert case["checked_out_after"] == 0, case
