"""``PrimaryReplicaRouter``: writes to a cluster's primary, reads to a healthy replica.

Every decision reads cached state only (the configuration, the ``contextvars`` pin state and
:data:`~django_poolkit.routing.state.replica_state`), so routing adds no round trip to a read.
:func:`choose_read` is the one decision both the ORM router and ``read_session()`` use; it
returns the alias and the reason, which is logged at DEBUG on ``django_poolkit.routers``.

A read goes to the primary, in this order of precedence, when: the code runs under
``use_primary()``; the primary's connection is inside ``atomic()`` (the transaction must see
its own writes, and Django's ``TestCase`` wraps every test in one); this scope wrote to the
cluster; the client holds a read-your-writes pin that no replica has caught up with. Otherwise
it goes to a replica in rotation, picked by the cluster's strategy (and, with ``sticky``, the
same one for the rest of the scope); with none in rotation it falls back to the primary or
raises :class:`~django_poolkit.exceptions.NoHealthyReplica`, as the cluster's ``fallback`` says.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import DatabaseError, connections

from . import pinning
from .exceptions import NoHealthyReplica
from .pinning import PinToken, parse_lsn
from .routing.settings import ClusterConfig, RoutingSettings, routing_settings
from .routing.state import replica_state

if TYPE_CHECKING:
    from django.db.models import Model

__all__ = ["PrimaryReplicaRouter", "ReadDecision", "capture_lsn", "choose_read", "issue_token"]

logger = logging.getLogger(__name__)


class ReadDecision(NamedTuple):
    """Where a read goes and why (``replica``, ``use_primary``, ``in_atomic_block``,
    ``wrote_in_scope``, ``pinned_time``, ``pinned_lsn``, ``fallback``, ``no_replicas``)."""

    alias: str
    reason: str


def _pick(cluster: ClusterConfig, candidates: list[tuple[str, float]],
          routing: RoutingSettings) -> str:
    if len(candidates) == 1:
        return candidates[0][0]
    if cluster.strategy == "random":
        return random.choice(candidates)[0]  # noqa: S311  (load spreading, not security)
    if cluster.strategy == "weighted":
        return random.choices([alias for alias, _ in candidates],  # noqa: S311
                              weights=[weight for _, weight in candidates])[0]
    return candidates[replica_state.next_index(cluster.name, routing) % len(candidates)][0]


def choose_read(cluster: ClusterConfig, routing: RoutingSettings) -> ReadDecision:
    """Decide where one read of ``cluster`` goes, from cached state only."""
    replica_state.ensure_prober(routing)
    primary = cluster.primary
    if pinning.primary_forced():
        return _to_primary(cluster, "use_primary", routing)
    if not cluster.replicas:
        return ReadDecision(primary, "no_replicas")
    # Creating the wrapper object opens no connection.
    if connections[primary].in_atomic_block:
        return _to_primary(cluster, "in_atomic_block", routing)
    found = pinning.current_scope()
    token: PinToken | None = None
    if found is not None:
        if found.wrote(cluster.name, routing.pin_seconds):
            return _to_primary(cluster, "wrote_in_scope", routing)
        token = found.token(cluster.name) if routing.pin_mode != "off" else None
    if token is not None and (token.lsn is None or routing.pin_mode == "time"):
        return _to_primary(cluster, "pinned_time", routing)
    candidates = replica_state.candidates(cluster, routing=routing)
    if not candidates:
        reasons = replica_state.out_reasons(cluster.name, routing)
        if cluster.fallback == "raise":
            raise NoHealthyReplica(cluster.name, reasons)
        replica_state.record_fallback(
            cluster.name, "no replica in rotation: "
            + "; ".join(f"{alias}: {why}" for alias, why in reasons.items()), routing)
        logger.debug("read of cluster %r -> %r (fallback)", cluster.name, primary)
        return ReadDecision(primary, "fallback")
    if token is not None:
        candidates = replica_state.candidates(cluster, token.lsn, routing)
        if not candidates:
            return _to_primary(cluster, "pinned_lsn", routing)
    alias: str | None = None
    if found is not None and routing.sticky:
        alias = found.chosen.get(cluster.name)
        if alias is not None and alias not in (name for name, _ in candidates):
            alias = None
    if alias is None:
        alias = _pick(cluster, candidates, routing)
        if found is not None and routing.sticky:
            found.chosen[cluster.name] = alias
    replica_state.record_read(cluster.name, alias, "replica", routing)
    logger.debug("read of cluster %r -> %r (replica)", cluster.name, alias)
    return ReadDecision(alias, "replica")


def _to_primary(cluster: ClusterConfig, reason: str, routing: RoutingSettings) -> ReadDecision:
    replica_state.record_read(cluster.name, cluster.primary, "primary", routing)
    logger.debug("read of cluster %r -> %r (%s)", cluster.name, cluster.primary, reason)
    return ReadDecision(cluster.primary, reason)


def capture_lsn(cluster: ClusterConfig) -> int | None:
    """The primary's WAL position now (``pg_current_wal_lsn()``), through the ORM connection
    of this thread; None when it cannot be read (the pin then lasts its whole window).

    Called after the writes of a request or task have committed, so every replica whose
    replay position reaches it has them (``synchronous_commit`` on: a commit returns only
    once its WAL is flushed, and the write position is at or past the flush position).
    """
    try:
        with connections[cluster.primary].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()::text")
            row = cursor.fetchone()
        return parse_lsn(row[0]) if row else None
    except (DatabaseError, ValueError) as error:
        logger.warning("cannot read the WAL position of %r for read-your-writes (the pin "
                       "lasts its whole window): %s", cluster.primary, type(error).__name__)
        return None


def issue_token(found: pinning.PinScope | None = None) -> str | None:
    """The signed read-your-writes token of the current scope: what the middleware puts in
    its cookie and header. Pass it to a task (``with pinning.scope(token):``) so the task
    reads what this request wrote. None when there is nothing to carry."""
    routing = routing_settings()
    found = found if found is not None else pinning.current_scope()
    if routing is None or found is None or routing.pin_mode == "off":
        return None
    lsns: dict[str, int | None] = {}
    for name in found.written:
        cluster = routing.clusters.get(name)
        if cluster is not None and routing.pin_mode == "lsn":
            lsns[name] = capture_lsn(cluster)
    tokens = found.outgoing(lsns, routing.pin_seconds)
    return pinning.encode_tokens(tokens) if tokens else None


class PrimaryReplicaRouter:
    """The database router: add ``"django_poolkit.routers.PrimaryReplicaRouter"`` to
    ``DATABASE_ROUTERS`` and describe the clusters in ``POOLKIT["ROUTING"]``.

    Models of no cluster (no default cluster, app not listed) get None from every method, so
    the next router or Django's default decides.
    """

    def _cluster(self, routing: RoutingSettings, model: type[Model] | None,
                 hints: dict[str, Any]) -> ClusterConfig | None:
        instance = hints.get("instance")
        state = getattr(instance, "_state", None)
        if state is not None:
            found = routing.cluster_of_alias(getattr(state, "db", None))
            if found is not None:
                return found
        if model is None:
            return None
        meta = model._meta
        return routing.cluster_of_model(meta.app_label, meta.object_name)

    def _routed(self, model: type[Model] | None,
                hints: dict[str, Any]) -> tuple[RoutingSettings, ClusterConfig] | None:
        """The routing settings and the model's cluster; None when poolkit routes nothing
        (no ``ROUTING``) or not this model."""
        routing = routing_settings()
        if routing is None:
            return None
        cluster = self._cluster(routing, model, hints)
        return None if cluster is None else (routing, cluster)

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """A replica of the model's cluster, or its primary (see the module docstring)."""
        routed = self._routed(model, hints)
        if routed is None:
            return None
        routing, cluster = routed
        return choose_read(cluster, routing).alias

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        """The model's primary; also pins the cluster's reads to it for this scope."""
        routed = self._routed(model, hints)
        if routed is None:
            return None
        cluster = routed[1]
        pinning.note_write(cluster.name)
        return cluster.primary

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """True within one cluster, False across two clusters, None otherwise."""
        routing = routing_settings()
        if routing is None:
            return None
        first = routing.cluster_of_alias(obj1._state.db)
        second = routing.cluster_of_alias(obj2._state.db)
        if first is None or second is None:
            return None
        return first.name == second.name

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        """Never on a replica (it is read-only and receives the schema by replication); on a
        primary, only the apps of its own cluster."""
        routing = routing_settings()
        if routing is None:
            return None
        cluster = routing.cluster_of_alias(db)
        if cluster is None:
            return None
        if db != cluster.primary:
            return False
        owner = routing.cluster_of_model(app_label, model_name)
        if owner is None:
            return None
        return owner.name == cluster.name
