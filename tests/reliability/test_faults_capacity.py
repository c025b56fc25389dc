"""Scenarios 1-3: bounded waits when the pool runs dry, the hard cap under a storm with
connect failures, and failed connects that leak no slot.

Scenarios 1 and 2 run on the main server (5432, this run's test database) and the streaming
replica (5433): they break nothing there. Scenario 3 stops a scratch cluster of its own.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from typing import Any

import pytest
from django.db import OperationalError, connections
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from django_poolkit import PoolTimeout, get_engine, pool_stats
from testproject.demo.models import Note

from ..helpers.faults import (
    Availability,
    OpenConnections,
    Scratch,
    ServerCount,
    add_pooled_alias,
    app_name_like,
    ms,
    poolkit_with,
)
from ..helpers.results import record
from ..helpers.tcpproxy import free_port
from ..helpers.threads import fan_out, running

DBS = ["default", "replica"]
#: A wait longer than its timeout plus this is a hang, on any machine.
GENEROUS_S = 30.0


def _server_dsn(alias: str) -> str:
    entry = connections.settings[alias]
    return (f"host={entry['HOST'] or '127.0.0.1'} port={entry['PORT'] or 5432} "
            f"user={entry['USER'] or 'postgres'} dbname=postgres")


# -- 1. exhaustion ----------------------------------------------------------------------------


def _exhaust(timeout: float, size: int, overflow: int) -> dict[str, Any]:
    """3x capacity concurrent checkouts, half through the ORM and half through SQLAlchemy,
    each holding its connection longer than ``timeout``: who got one, who timed out and how
    long each timed-out caller waited."""
    capacity = size + overflow
    callers = 3 * capacity
    # Nobody is served by a release before the waiters give up, even when a loaded machine
    # starts a waiter late.
    hold = timeout + 3.0
    waits: list[float] = []
    served: list[int] = []
    unexpected: list[str] = []
    lock = threading.Lock()

    def caller(index: int) -> None:  # the callers start together (fan_out's barrier)
        began = time.perf_counter()
        try:
            if index % 2:
                with get_engine().connect() as sa:
                    sa.execute(text("SELECT pg_sleep(:hold)"), {"hold": hold})
            else:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(%s)", [hold])
        except PoolTimeout:
            with lock:
                waits.append(time.perf_counter() - began)
        except Exception as error:
            with lock:
                unexpected.append(type(error).__name__)
        else:
            with lock:
                served.append(index)
        finally:
            connections["default"].close()

    fan_out(caller, callers, timeout=30)
    tolerance = max(0.05, 0.1 * timeout)
    stats = pool_stats()
    return {
        "timeout_s": timeout, "callers": callers, "served": len(served),
        "timed_out": len(waits), "unexpected": unexpected,
        "wait_min_ms": ms(min(waits, default=0.0)),
        "wait_p50_ms": ms(statistics.median(waits) if waits else 0.0),
        "wait_max_ms": ms(max(waits, default=0.0)),
        "band_ms": [ms(timeout), ms(timeout + tolerance)],
        "in_band": all(timeout <= wait <= timeout + tolerance for wait in waits),
        "checked_out_after": stats.pool_checked_out, "waiting_after": stats.pool_waiting,
    }


@pytest.mark.django_db(transaction=True)
def test_s1_exhaustion_waits_are_bounded(settings: Any) -> None:
    size, overflow = 2, 1
    rounds = []
    for timeout in (0.25, 1.0):
        settings.POOLKIT = poolkit_with({"default": {
            "pool_size": size, "max_overflow": overflow, "pool_timeout": timeout}})
        rounds.append(_exhaust(timeout, size, overflow))
    met = all(
        one["in_band"] and one["served"] == size + overflow
        and one["timed_out"] == 2 * (size + overflow) and not one["unexpected"]
        and one["checked_out_after"] == 0 and one["waiting_after"] == 0
        for one in rounds)
    record("1 exhaustion", bar="every timed-out wait in [timeout, timeout + max(50 ms, 10%)]; "
           "checked out after: 0", met=met, pool_size=size, max_overflow=overflow,
           rounds=rounds)
    # What holds on any machine (the band is the bar): the exhaustion surfaces as
    # PoolTimeout and nothing else, after at least the timeout and within a generous bound;
    # every caller is accounted for; no slot or waiter is left behind.
    for one in rounds:
        assert not one["unexpected"], rounds
        assert one["served"] >= size + overflow, rounds
        assert one["timed_out"] > 0, rounds
        assert one["served"] + one["timed_out"] == one["callers"], rounds
        assert one["timeout_s"] * 1000 <= one["wait_min_ms"], rounds
        assert one["wait_max_ms"] < (one["timeout_s"] + GENEROUS_S) * 1000, rounds
        assert (one["checked_out_after"], one["waiting_after"]) == (0, 0), rounds


# -- 2. hard cap under a storm ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases=DBS)
def test_s2_hard_cap_under_a_storm_with_connect_failures(settings: Any) -> None:
    sizes = {"default": (3, 2), "replica": (2, 2)}
    settings.POOLKIT = poolkit_with({
        alias: {"pool_size": size, "max_overflow": overflow, "pool_timeout": 15}
        for alias, (size, overflow) in sizes.items()})
    refused = free_port()
    trackers = {alias: OpenConnections(get_engine(alias), fail_every=4, refused_port=refused)
                for alias in sizes}
    threads_n, duration = 200, 4.0
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def count(what: str) -> None:
        with lock:
            outcomes[what] = outcomes.get(what, 0) + 1

    def storm(seed: int) -> None:
        chooser = random.Random(seed)  # noqa: S311 (a reproducible mix, not a secret)
        while not stop.is_set():
            alias = chooser.choice(DBS)
            kind = chooser.choice(("orm", "orm", "sqlalchemy", "invalidate"))
            try:
                if kind == "orm" and alias == "default":
                    Note.objects.create(title=f"storm {seed}")
                elif kind == "orm":
                    Note.objects.using(alias).count()
                else:
                    with get_engine(alias).connect() as sa:
                        sa.execute(text("SELECT pg_sleep(0.002)"))
                        if kind == "invalidate":
                            sa.invalidate()  # the next checkout of this slot reconnects
                count(f"{alias}:ok")
            except (OperationalError, sa_exc.OperationalError):
                count(f"{alias}:connect_failed")
            except PoolTimeout:
                count(f"{alias}:pool_timeout")
            except Exception as error:
                count(f"{alias}:unexpected:{type(error).__name__}")
            finally:
                connections[alias].close()

    counters = {alias: ServerCount(_server_dsn(alias), app_name_like(alias), trackers[alias])
                for alias in sizes}
    for counter in counters.values():
        counter.__enter__()
    try:
        # Leaving the block fails the test if a worker still runs 60 s after the stop.
        with running(storm, threads_n, timeout=60):
            try:
                time.sleep(duration)
            finally:
                stop.set()
    finally:
        for counter in counters.values():
            counter.__exit__()
    per_server = {}
    met = True
    for alias, (size, overflow) in sizes.items():
        cap, counter, tracker = size + overflow, counters[alias], trackers[alias]
        assert counter.error is None, counter.error
        over = max(0, counter.peak - cap)
        per_server[alias] = {
            "cap": cap, "server_peak": counter.peak, "server_peak_raw": counter.raw_peak,
            "client_open_peak": tracker.peak, "over_cap": over, "samples": counter.samples,
            "sample_gap_max_ms": ms(counter.max_gap), "connect_attempts": tracker.attempts,
            "connect_failures_injected": tracker.injected,
            "checked_out_after": pool_stats(alias).pool_checked_out,
        }
        met = met and over == 0 and tracker.peak <= cap and tracker.injected > 0 and (
            per_server[alias]["checked_out_after"] == 0)
    met = met and not any(":unexpected:" in outcome for outcome in outcomes)
    record("2 hard cap under a storm", bar="server connections above pool_size + max_overflow "
           "per process: 0", met=met, threads=threads_n, seconds=duration,
           outcomes=dict(sorted(outcomes.items())), servers=per_server)
    assert met, per_server


# -- 3. a failed connect leaks no slot --------------------------------------------------------


def _gauges(alias: str) -> dict[str, int]:
    stats = pool_stats(alias)
    return {"checked_in": stats.pool_checked_in, "checked_out": stats.pool_checked_out,
            "overflow": stats.pool_overflow, "waiting": stats.pool_waiting}


@pytest.mark.usefixtures("unblocked")
def test_s3_refused_connects_leak_no_slot(settings: Any, scratch: Scratch) -> None:
    size, overflow, attempts = 2, 1, 30
    capacity = size + overflow
    with add_pooled_alias("s3", HOST="127.0.0.1", PORT=str(scratch.port),
                          NAME="postgres") as alias:
        settings.POOLKIT = poolkit_with({alias: {
            "pool_size": size, "max_overflow": overflow, "pool_timeout": 1,
            "connect_timeout": 2}})
        engine = get_engine(alias)
        held = [engine.connect() for _ in range(capacity)]  # open every slot once
        for sa in held:
            sa.close()
        before = _gauges(alias)

        scratch.run("stop")
        errors: dict[str, int] = {}
        messages = {"connection refused": 0, "other": 0}
        lock = threading.Lock()

        def refused(worker: int) -> None:
            for attempt in range(attempts // capacity):
                try:
                    if (worker + attempt) % 2:
                        with engine.connect() as sa:
                            sa.execute(text("SELECT 1"))
                    else:
                        with connections[alias].cursor() as cursor:
                            cursor.execute("SELECT 1")
                except Exception as error:
                    name = type(error).__module__.split(".")[0] + "." + type(error).__name__
                    refusal = "Connection refused" in str(error)
                    with lock:
                        errors[name] = errors.get(name, 0) + 1
                        messages["connection refused" if refusal else "other"] += 1
                finally:
                    connections[alias].close()

        fan_out(refused, capacity, timeout=60)
        after_failures = _gauges(alias)

        # The server comes back; a request every 20 ms notices.
        successes: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                try:
                    with connections[alias].cursor() as cursor:
                        cursor.execute("SELECT 1")
                    successes.append(time.monotonic())
                    return
                except Exception:
                    stop.wait(0.02)
                finally:
                    connections[alias].close()

        with Availability(scratch) as availability:
            poller = threading.Thread(target=poll)
            poller.start()
            restarted = time.monotonic()
            scratch.run("start")
            poller.join(timeout=30)
            stop.set()
        back = availability.up_after(restarted)
        first_success = max(0.0, successes[0] - back) if successes else None

        # Every slot still works, and there is still no slot beyond the cap.
        held = [engine.connect() for _ in range(capacity)]
        try:
            for sa in held:
                sa.execute(text("SELECT 1"))
            with pytest.raises(PoolTimeout):
                engine.connect()
        finally:
            for sa in held:
                sa.close()
        after = _gauges(alias)

    failures = sum(errors.values())
    met = (after_failures == before and after == before and failures == attempts
           and messages["connection refused"] == attempts
           and set(errors) <= {"django.OperationalError", "sqlalchemy.OperationalError"}
           and first_success is not None and first_success <= 1.0)
    record("3 failed connect leaks no slot", bar="pool accounting unchanged after K refused "
           "connects; first success <= 1 s after the server accepts again", met=met,
           refused_connects=failures, errors=errors, messages=messages,
           gauges_before=before,
           gauges_after_failures=after_failures, gauges_after=after,
           first_success_after_return_ms=ms(first_success), poll_interval_ms=20)
    # What holds on any machine (the 1 s recovery is the bar): the accounting, the errors
    # and a recovery.
    context = (before, after_failures, after, errors, first_success)
    assert after_failures == before, context
    assert after == before, context
    assert failures == attempts, context
    assert messages["connection refused"] == attempts, context
    assert set(errors) <= {"django.OperationalError", "sqlalchemy.OperationalError"}, context
    assert first_success is not None, context
