"""Public Django signals, one per pool event.

Every signal is sent with ``sender`` = the alias (a ``str``) and these keyword arguments:

- ``alias``: the ``DATABASES`` alias or ``POOLKIT["ENGINES"]`` name;
- ``kind``: ``"sync"`` or ``"async"`` (which of the alias's two pools);
- ``connection_id``: a small integer naming the pooled connection for this process's lifetime
  (stable across checkouts, so receivers can follow one connection).

Signals cost nothing when nobody listens. Receivers run inside the pool's event, on the thread
doing the checkout: keep them short, and never raise (an exception is logged and swallowed).
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = [
    "pool_checkin",
    "pool_checkout",
    "pool_close",
    "pool_connect",
    "pool_invalidate",
    "pool_reset",
    "pool_soft_invalidate",
    "pool_timeout",
    "replica_state_changed",
]

#: A new server connection was opened for the pool.
pool_connect = Signal()

#: A connection was handed out. Extra kwarg: ``wait_ms`` (time the caller waited, ms; None
#: when unknown).
pool_checkout = Signal()

#: A connection came back to the pool. Extra kwarg: ``hold_ms`` (time it was checked out, ms).
#: Sent while it is being returned (SQLAlchemy's checkin event), before it is back in the
#: queue: ``pool_stats()`` inside a receiver still counts it as checked out.
pool_checkin = Signal()

#: A connection was declared unusable and will be closed. Extra kwarg: ``error`` (the exception
#: that caused it, or None for an explicit invalidation). Never handed out again.
pool_invalidate = Signal()

#: A connection was marked to be replaced at its next checkout (recycling, pre-ping failure of a
#: sibling). Extra kwarg: ``error`` (or None).
pool_soft_invalidate = Signal()

#: A returned connection was reset (rolled back) before going back into the pool.
pool_reset = Signal()

#: A server connection was closed by the pool.
pool_close = Signal()

#: A checkout gave up after ``pool_timeout``. Extra kwargs: ``timeout`` (s), ``pool_size``,
#: ``max_overflow``, ``checked_out``.
pool_timeout = Signal()

#: A replica's routing state changed: taken out of rotation (``down``, ``lagging``,
#: ``not_replica``) or back in (``healthy``), by a probe or by a failed connection. Unlike the
#: signals above, ``sender`` is the *replica's* alias and the kwargs are ``alias``,
#: ``cluster``, ``previous`` and ``status`` (``unknown``, ``healthy``, ``lagging``, ``down``,
#: ``not_replica``), ``reason`` (None when healthy; never a DSN or password) and
#: ``in_rotation``. Sent from the probing thread after the state is updated, at most once per
#: change, so an alert hooked here does not fire on every read of an excluded replica.
replica_state_changed = Signal()
