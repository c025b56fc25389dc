"""Spread the recycling of a pool's connections (``pool_recycle``) over time.

SQLAlchemy replaces a connection at checkout once ``time.time() - record.starttime`` exceeds
``pool_recycle``. A pool filled at once (a warm-up, the first burst after a deploy, the
reconnect after a server restart) therefore expires at once: every connection is closed and
reopened within the same second, an hour later and every hour after that, and the requests
of that second all pay for a connect (TLS and authentication included). HikariCP and
psycopg_pool shorten each connection's lifetime by a small random amount for this reason.

Each connection here gets its own lifetime, ``pool_recycle`` minus a random 0-10 %, drawn when
it is opened. A connection that comes back to the pool older than that is marked expired
(its ``starttime`` is moved back past ``pool_recycle``), so SQLAlchemy's own recycle replaces
it at its next checkout, exactly as it would at ``pool_recycle``: same log line, same events,
no connection closed while someone uses it.

Why at checkin, and why not shift ``starttime`` when the connection is opened: SQLAlchemy
also compares ``starttime`` with the pool's invalidation time (after a disconnect every
connection older than it is replaced). Moving ``starttime`` back at connect would make a
connection opened just after an invalidation look older than it, and be replaced again at
once; moving it forward would let a connection opened just before one escape it. A
connection marked at checkin is being replaced anyway.

The lifetime is never longer than ``pool_recycle``: a connection idle in the pool past its
own lifetime is still replaced by SQLAlchemy at ``pool_recycle``.
"""

from __future__ import annotations

import random
import time
from typing import Any

from sqlalchemy import event

__all__ = ["LIFETIME", "SPREAD", "expire_if_due", "install_recycle_jitter"]

#: Largest share of ``pool_recycle`` taken off a connection's lifetime.
SPREAD = 0.1
#: Key in a connection's ``info`` dict: its own lifetime in seconds.
LIFETIME = "poolkit_lifetime"

# Not for security: load spreading (tests seed it).
_random = random.Random()  # noqa: S311


def expire_if_due(record: Any, recycle: float) -> None:
    """At checkin: mark a connection older than its own lifetime for SQLAlchemy to replace
    at its next checkout."""
    lifetime = record.info.get(LIFETIME)
    if lifetime is not None and time.time() - record.starttime > lifetime:
        record.starttime = time.time() - recycle - 1.0


def install_recycle_jitter(engine: Any) -> None:
    """Give every connection of ``engine``'s pool a lifetime of ``pool_recycle`` minus a
    random 0-10 %; a no-op when the pool never recycles (``pool_recycle`` -1).

    Poolkit's pools check the lifetime in their own checkin (``poolkit_recycle``); other
    pools get a ``checkin`` listener."""
    recycle = float(getattr(engine.pool, "_recycle", -1))
    if recycle <= 0:
        return

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # SQLAlchemy clears ``info`` before each (re)connect: a new connection, a new draw.
        record.info[LIFETIME] = recycle * (1.0 - SPREAD * _random.random())

    event.listen(engine, "connect", on_connect)
    if hasattr(engine.pool, "poolkit_recycle"):
        engine.pool.poolkit_recycle = recycle
        return

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None or record is None:
            return  # invalidated: reconnected at its next checkout anyway
        expire_if_due(record, recycle)

    event.listen(engine, "checkin", on_checkin)
