"""What the replica state reports: a snapshot per replica and per cluster, as the router,
the health views, ``poolstatus`` and metrics read it (no I/O, no locks held)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["ClusterStatus", "ReplicaStatus", "RotationStatus"]

#: Where a replica stands: in rotation (``unknown``, ``healthy``) or out of it.
RotationStatus = Literal["unknown", "healthy", "lagging", "down", "not_replica"]


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica. Times are ``time.time()`` seconds; ``reason`` says why it is
    out of rotation (None when in); ``lag_seconds``/``lag_bytes`` are None until measured."""

    alias: str
    cluster: str
    weight: float
    status: RotationStatus
    in_rotation: bool
    reason: str | None
    out_since: float | None
    lag_seconds: float | None
    lag_bytes: int | None
    replay_lsn: str | None
    replay_paused: bool | None
    last_probe_at: float | None
    last_ok_at: float | None
    last_error: str | None
    failures: int
    reads: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with times as ISO 8601 UTC strings."""
        values = asdict(self)
        for key in ("out_since", "last_probe_at", "last_ok_at"):
            values[key] = _iso(values[key])
        return values


@dataclass(frozen=True)
class ClusterStatus:
    """A snapshot of one cluster: its replicas; ``fallbacks``, the reads that went to the
    primary because no replica qualified (with the latest reason and time); and
    ``primary_reads``, the reads sent there on purpose (``use_primary()``, ``atomic()``,
    read-your-writes). Counters are per process, since it started."""

    name: str
    primary: str
    fallback: str
    replicas: tuple[ReplicaStatus, ...]
    primary_lsn: str | None
    primary_error: str | None
    fallbacks: int
    primary_reads: int
    last_fallback_at: float | None
    last_fallback_reason: str | None

    @property
    def degraded(self) -> bool:
        """True when the cluster has replicas and none of them serves reads."""
        return bool(self.replicas) and not any(r.in_rotation for r in self.replicas)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``degraded`` included."""
        values = asdict(self)
        values["replicas"] = [replica.as_dict() for replica in self.replicas]
        values["last_fallback_at"] = _iso(self.last_fallback_at)
        values["degraded"] = self.degraded
        return values


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=UTC).isoformat(timespec="milliseconds")


