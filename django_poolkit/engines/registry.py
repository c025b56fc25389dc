"""The engine registry: one sync and (on demand) one async SQLAlchemy engine per alias, per
process.

Engines are built on first use, never at import or in ``ready()``. Each is keyed by a
fingerprint of everything that decides where its connections go (the resolved pool settings,
the alias's ``NAME``, ``USER``, ``PASSWORD``, ``HOST``, ``PORT``, ``OPTIONS`` and time zone), so
when Django's test runner switches ``NAME`` to ``test_...`` or ``override_settings`` changes
``POOLKIT``, the next lookup builds a new pool and disposes the old one. A forked child never
touches its parent's connections: ``os.register_at_fork`` drops them with
``dispose(close=False)`` (closing would send a Terminate message on sockets the parent still
uses), and the lookup also compares ``os.getpid()`` in case a fork escaped the hook.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connections
from django.views.decorators.debug import sensitive_variables
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import Pool

from ..conf import PoolSettings, get_settings
from ..exceptions import PoolkitError, UnknownAlias
from ..stats import PoolKind, counters_for, reset_counters
from .deadline import install_client_deadline, own_round_trip_bound
from .events import PoolEvents, attach_listeners
from .hygiene import install_pre_ping, install_session_hygiene, sqlalchemy_cursor_classes
from .leaks import install_leak_detection
from .params import ConnectSpec, connection_spec, is_shared
from .pool import PoolkitAsyncQueuePool, PoolkitQueuePool
from .recycle import install_recycle_jitter
from .resend import install_resend
from .sharing import PerThread, install_sharing

__all__ = ["EngineRegistry", "engine_registry"]

logger = logging.getLogger(__name__)


class _Entry(NamedTuple):
    engine: Any  # Engine or AsyncEngine
    fingerprint: tuple[Any, ...]
    pid: int


def _is_memory_sqlite(spec: ConnectSpec) -> bool:
    database = spec.url.database or ""
    return spec.vendor == "sqlite" and (database in ("", ":memory:") or "mode=memory" in database)


def _configure_pool(pool: Pool, kind: PoolKind, settings_: PoolSettings,
                    events: PoolEvents) -> None:
    if isinstance(pool, (PoolkitQueuePool, PoolkitAsyncQueuePool)):
        pool.poolkit_events = events
        pool.poolkit_max_overflow = (
            settings_.max_overflow if kind == "sync" else settings_.async_max_overflow)


def _frozen(fingerprint: tuple[Any, ...]) -> tuple[Any, ...]:
    """The fingerprint as stored: its ``OPTIONS`` dict copied deeply, so that a change made
    to the alias's ``OPTIONS`` in place still compares unequal. (Comparing the dicts costs
    a fraction of the ``repr()`` this replaced, on every checkout.) Values that cannot be
    copied are kept as they are: then only a new ``OPTIONS`` object is noticed."""
    try:
        return tuple(copy.deepcopy(part) if isinstance(part, dict) else part
                     for part in fingerprint)
    except Exception:  # an exotic OPTIONS value; the fingerprint still compares
        return fingerprint


class EngineRegistry:
    """Builds, caches and disposes the engines of this process. Use the module's
    :data:`engine_registry`; the public functions in ``django_poolkit`` wrap it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[tuple[str, PoolKind], _Entry] = {}

    def __repr__(self) -> str:
        return f"<EngineRegistry pools={sorted(f'{a}:{k}' for a, k in self._entries)}>"

    def _fingerprint(self, alias: str) -> tuple[tuple[Any, ...], PoolSettings]:
        config = get_settings()
        pool = config.for_alias(alias)
        if pool is None:
            known = ", ".join(sorted(config.pools)) or "none"
            raise UnknownAlias(
                f"no database or engine named {alias!r} (known: {known}); add it to "
                'settings.DATABASES or POOLKIT["ENGINES"]')
        if pool.url is not None:
            return (pool,), pool
        database = connections.settings[alias]
        return (
            pool, database.get("ENGINE"), database.get("NAME"), database.get("USER"),
            database.get("PASSWORD"), database.get("HOST"), database.get("PORT"),
            database.get("OPTIONS"), database.get("TIME_ZONE"), settings.USE_TZ,
            settings.TIME_ZONE,
        ), pool

    def get(self, alias: str, kind: PoolKind) -> Any:
        """The engine of ``alias`` (building or rebuilding it when its fingerprint changed)."""
        fingerprint, pool = self._fingerprint(alias)
        pid = os.getpid()
        entry = self._entries.get((alias, kind))
        if entry is not None and entry.pid == pid and entry.fingerprint == fingerprint:
            return entry.engine
        with self._lock:
            entry = self._entries.get((alias, kind))
            if entry is not None and entry.pid == pid and entry.fingerprint == fingerprint:
                return entry.engine
            if entry is not None:
                self._retire(alias, kind, entry, same_process=entry.pid == pid)
            engine = self._build(alias, kind, pool)
            self._entries[(alias, kind)] = _Entry(engine, _frozen(fingerprint), pid)
            logger.info("built %s engine for %r: %s", kind, alias, _describe(engine))
            return engine

    def built(self, alias: str, kind: PoolKind) -> Any | None:
        """The engine of ``alias`` if this process has built it, else None (never builds)."""
        entry = self._entries.get((alias, kind))
        return entry.engine if entry is not None and entry.pid == os.getpid() else None

    def _build(self, alias: str, kind: PoolKind, pool: PoolSettings) -> Any:
        shared = kind == "sync" and pool.url is None and is_shared(alias)
        spec = connection_spec(alias, pool, shared=shared)
        # The password stays out of SQLAlchemy's connect arguments (whose frames Django's error
        # reports show): install_password adds it below a frame those reports hide.
        connect_args = dict(spec.connect_args)
        password = connect_args.pop("password", None)
        kwargs: dict[str, Any] = {"connect_args": connect_args, **spec.engine_kwargs}
        if not _is_memory_sqlite(spec):
            kwargs.update(
                pool_pre_ping=pool.pool_pre_ping, pool_recycle=pool.pool_recycle,
                pool_timeout=pool.pool_timeout, pool_use_lifo=pool.pool_use_lifo)
        # psycopg sync pools reset connections with poolkit's own listener (the policy).
        hygiene = kind == "sync" and spec.vendor == "postgresql"
        if hygiene:
            kwargs["pool_reset_on_return"] = None
        if shared:
            # SQLAlchemy would register psycopg's hstore adapter on the first connection
            # only (the others keep Django's context): let its HSTORE type convert instead.
            kwargs["use_native_hstore"] = False
        if kind == "sync":
            if not _is_memory_sqlite(spec):
                kwargs.update(poolclass=PoolkitQueuePool, pool_size=pool.pool_size,
                              max_overflow=pool.max_overflow)
            engine: Any = create_engine(spec.url, **kwargs)
            sync_engine: Engine = engine
        else:
            url = spec.url
            if spec.vendor == "sqlite":
                url = url.set(drivername="sqlite+aiosqlite")
            elif not _is_memory_sqlite(spec):
                kwargs.update(poolclass=PoolkitAsyncQueuePool, pool_size=pool.async_pool_size,
                              max_overflow=pool.async_max_overflow)
            try:
                engine = create_async_engine(url, **kwargs)
            except ImportError as error:
                raise PoolkitError(
                    f"the async engine for {alias!r} needs a package that is not installed "
                    f"({error.name}); install django-poolkit[sqlite-async]") from error
            sync_engine = engine.sync_engine
        events = PoolEvents(alias, kind, counters_for(alias, kind))
        _configure_pool(sync_engine.pool, kind, pool, events)
        attach_listeners(sync_engine, events, reset=not hygiene, checkin=not isinstance(
            sync_engine.pool, (PoolkitQueuePool, PoolkitAsyncQueuePool)))
        install_recycle_jitter(sync_engine)  # pool_recycle minus 0-10 % per connection
        # Poolkit's connection class: client_timeout, and bounds on the pool's own round
        # trips (pre-ping, checkin reset) so a frozen server cannot hang them.
        bound: float | None = None
        if spec.vendor == "postgresql":
            own = own_round_trip_bound(pool.connect_timeout)
            if install_client_deadline(sync_engine, alias, pool.client_timeout, bound=own):
                bound = own
        if password is not None:
            install_password(sync_engine, password)
        if hygiene:
            if isinstance(sync_engine.pool, PoolkitQueuePool):
                sync_engine.pool.poolkit_autocommit_off = True
                if shared:
                    # One connection per thread for the ORM and SQLAlchemy (.sharing).
                    sync_engine.pool.poolkit_local = PerThread()
                    sync_engine.pool.poolkit_cursor_classes = sqlalchemy_cursor_classes()
                    install_sharing(sync_engine)
            install_session_hygiene(sync_engine, alias, pool.reset_on_return or "rollback",
                                    shared=shared, events=events,
                                    bound=bound)
            install_pre_ping(sync_engine, pool.pre_ping_mode or "socket", bound=bound)
        if spec.vendor == "postgresql":
            # After the hygiene's connect listener (which sets the cursor classes it wraps).
            install_resend(sync_engine, alias)
        if pool.leak_detection_threshold is not None:
            install_leak_detection(sync_engine, alias, kind, pool.leak_detection_threshold)
        return engine

    def _retire(self, alias: str, kind: PoolKind, entry: _Entry, *, same_process: bool) -> None:
        """Forget an engine whose fingerprint changed or that was disposed. In the process
        that opened them, idle connections close now and checked-out ones when they come
        back; in a forked child nothing is closed (the sockets are the parent's)."""
        del self._entries[(alias, kind)]
        sync_engine: Engine = entry.engine.sync_engine if kind == "async" else entry.engine
        if not same_process:
            sync_engine.dispose(close=False)
        else:
            sync_engine.pool.poolkit_retired = True  # type: ignore[attr-defined]
            if kind == "sync":
                sync_engine.dispose()
            else:
                _close_async(entry.engine)
        logger.info("disposed %s engine for %r", kind, alias)

    def dispose(self, alias: str | None = None) -> None:
        """Close the idle connections of ``alias``'s engines (all engines when None) and
        forget them; connections checked out now are closed when they come back."""
        with self._lock:
            for key in [key for key in self._entries if alias is None or key[0] == alias]:
                entry = self._entries[key]
                self._retire(*key, entry, same_process=entry.pid == os.getpid())

    def dispose_database(self, name: str) -> list[str]:
        """Dispose every engine whose connections go to the PostgreSQL database ``name``
        (the test runner calls this before it drops, clones or recreates that database,
        which needs no other session on it). Returns the aliases disposed."""
        with self._lock:
            found = []
            for key, entry in list(self._entries.items()):
                engine = entry.engine
                url = (engine.sync_engine if isinstance(engine, AsyncEngine) else engine).url
                if url.get_backend_name() == "postgresql" and url.database == name:
                    self._retire(*key, entry, same_process=entry.pid == os.getpid())
                    found.append(key[0])
            return found

    async def adispose(self, alias: str | None = None) -> None:
        """Like :meth:`dispose`, awaiting the async engines' connections on this loop."""
        with self._lock:
            keys = [key for key in self._entries if alias is None or key[0] == alias]
            entries = [self._entries.pop(key) for key in keys]
        for (_, kind), entry in zip(keys, entries, strict=True):
            if entry.pid != os.getpid():
                continue
            engine = entry.engine
            (engine.sync_engine if kind == "async" else engine).pool.poolkit_retired = True
            if kind == "async":
                await entry.engine.dispose()
            else:
                entry.engine.dispose()

    def after_fork_in_child(self) -> None:
        """Forget the parent's engines without closing their sockets, and start fresh
        counters: this process's pools begin empty."""
        for entry in list(self._entries.values()):
            engine = entry.engine
            sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
            sync_engine.dispose(close=False)
        self._entries.clear()
        # The parent may have held the lock at fork time; the child has only this thread.
        self._lock = threading.RLock()
        reset_counters(after_fork=True)


def _close_async(engine: AsyncEngine) -> None:
    """Dispose an async engine from sync code: on a private loop when none is running, else
    schedule it on the running loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        try:
            asyncio.run(engine.dispose())
        except Exception:
            logger.debug("could not close async engine cleanly; dropping it", exc_info=True)
            engine.sync_engine.dispose(close=False)
    else:
        task = loop.create_task(engine.dispose())
        _pending_disposals.add(task)
        task.add_done_callback(_pending_disposals.discard)


# Tasks must be referenced until done, or the loop may garbage-collect them mid-flight.
_pending_disposals: set[asyncio.Task[None]] = set()


def install_password(engine: Any, password: str) -> None:
    """Give the dialect's ``connect`` the password, inside a function Django's error reports
    hide (``sensitive_variables``: that frame and every frame below it, psycopg's included).

    Wraps whatever ``connect`` is installed (poolkit's client deadline, or SQLAlchemy's), after
    every ``do_connect`` listener has run; a password a listener set (an IAM token) wins.
    """
    dialect = engine.dialect
    connect_ = dialect.connect

    @sensitive_variables()
    def connect(*cargs: Any, **cparams: Any) -> Any:
        cparams.setdefault("password", password)
        return connect_(*cargs, **cparams)

    dialect.connect = connect


def _describe(engine: Any) -> str:
    # repr(URL) hides the password; ours never holds one anyway.
    url = engine.url if not isinstance(engine, AsyncEngine) else engine.sync_engine.url
    return url.render_as_string(hide_password=True)


#: The process-wide registry.
engine_registry = EngineRegistry()
