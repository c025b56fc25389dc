"""SQLAlchemy sessions that follow the ORM's routing and read-your-writes pins.

::

    with read_session() as session:             # a replica, or the primary when pinned
        rows = session.execute(select(...)).all()
    with write_session() as session:            # the primary; commits on success
        session.add(obj)

    async with read_session() as session:       # the same objects give AsyncSessions
        ...

``read_session(name)`` routes like a read of the ORM: the replica is chosen by
:func:`~django_poolkit.routers.choose_read` at entry, so ``use_primary()``, ``atomic()`` on the
primary, this scope's writes and the client's pin all apply. ``write_session`` always uses the
primary and pins the cluster for the rest of the scope, exactly like an ORM write.

``name`` is a cluster name (default: the default cluster) or, without ``POOLKIT["ROUTING"]``,
any alias of ``DATABASES`` or ``POOLKIT["ENGINES"]`` (default ``"default"``).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .. import pinning
from ..api import get_async_engine, get_engine
from ..exceptions import UnknownAlias
from ..routers import choose_read
from .settings import ClusterConfig, routing_settings

__all__ = ["read_session", "write_session"]


def _cluster(name: str | None) -> ClusterConfig | None:
    routing = routing_settings()
    if routing is None:
        return None
    if name is None:
        if routing.default_cluster is None:
            raise UnknownAlias(
                'no default cluster (every cluster in POOLKIT["ROUTING"] lists "apps"): pass '
                "the cluster name, e.g. read_session(\"main\")")
        return routing.clusters[routing.default_cluster]
    found = routing.clusters.get(name) or routing.cluster_of_alias(name)
    return found


def resolve(role: Literal["read", "write"], name: str | None) -> str:
    """The alias a session of ``role`` on ``name`` uses now; a write pins its cluster."""
    cluster = _cluster(name)
    if cluster is None:
        return name or "default"
    if role == "write":
        pinning.note_write(cluster.name)
        return cluster.primary
    routing = routing_settings()
    assert routing is not None  # _cluster found a cluster, so routing is configured
    return choose_read(cluster, routing).alias


class _SessionContext:
    """``with`` gives a :class:`~sqlalchemy.orm.Session`, ``async with`` an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`; both closed at exit. A write session
    commits at a clean exit and rolls back on an exception; a read session rolls back."""

    def __init__(self, role: Literal["read", "write"], name: str | None,
                 options: dict[str, Any]) -> None:
        self._role = role
        self._name = name
        self._options = options
        self._session: Session | None = None
        self._async_session: AsyncSession | None = None
        self.alias: str | None = None

    def __repr__(self) -> str:
        return f"<{self._role}_session {self._name or 'default'!r} alias={self.alias!r}>"

    def __enter__(self) -> Session:
        self.alias = resolve(self._role, self._name)
        self._session = Session(bind=get_engine(self.alias), **self._options)
        return self._session

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        session, self._session = self._session, None
        assert session is not None
        try:
            if self._role == "write" and kind is None:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()

    async def __aenter__(self) -> AsyncSession:
        self.alias = resolve(self._role, self._name)
        self._async_session = AsyncSession(bind=get_async_engine(self.alias), **self._options)
        return self._async_session

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        session, self._async_session = self._async_session, None
        assert session is not None
        try:
            if self._role == "write" and kind is None:
                await session.commit()
            else:
                await session.rollback()
        finally:
            await session.close()


def read_session(name: str | None = None, **options: Any) -> _SessionContext:
    """A session for reads, on the replica (or primary) a read of ``name`` is routed to now.
    ``options`` go to the ``Session``/``AsyncSession`` constructor."""
    return _SessionContext("read", name, options)


def write_session(name: str | None = None, **options: Any) -> _SessionContext:
    """A session on the primary of ``name`` that commits at a clean exit; it pins the
    cluster's reads to the primary for the rest of the scope."""
    return _SessionContext("write", name, options)
