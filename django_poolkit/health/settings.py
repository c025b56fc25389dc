"""``POOLKIT["HEALTH"]``, validated: what the probes reach, how long they may take, who sees
details, and the replica policy. Parsed through ``conf.SECTION_PARSERS`` (check ids
``poolkit.E030``-``E034``); :func:`health_settings` returns the current section.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from django.db import connections

from .._schema import Report, did_you_mean, known_items
from ..check_ids import (
    E_HEALTH_BAD_VALUE,
    E_HEALTH_CONFLICT,
    E_HEALTH_NOT_A_DICT,
    E_HEALTH_UNKNOWN_ALIAS,
    E_HEALTH_UNKNOWN_KEY,
)
from ..conf import get_settings

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "SETTING_RULES",
    "UNHEALTHY",
    "HealthSettings",
    "Status",
    "health_settings",
    "parse_settings",
    "with_overrides",
]

Status = Literal["healthy", "degraded", "unhealthy"]
HEALTHY: Status = "healthy"
DEGRADED: Status = "degraded"
UNHEALTHY: Status = "unhealthy"

# Vendors a probe knows how to reach; other aliases are left out of the report.
_PROBED_VENDORS = ("postgresql", "sqlite")

_MINIMUM_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class HealthSettings:
    """``POOLKIT["HEALTH"]``, validated. Times are seconds.

    ``databases`` None probes every PostgreSQL and SQLite alias of ``DATABASES``; ``replicas``
    None takes the aliases whose ``TEST["MIRROR"]`` is set (Django's mark of a replica) and
    the replicas of the router's clusters. ``primary`` is None when ``databases`` is given
    without ``"default"`` and no primary is named.
    """

    timeout: float = 0.5
    cache_ttl: float = 2.0
    token: str | None = field(default=None, repr=False)
    token_header: str = "X-Poolkit-Health-Token"  # noqa: S105 (a header name, not a secret)
    databases: tuple[str, ...] | None = None
    primary: str | None = "default"
    replicas: tuple[str, ...] | None = None
    min_replicas: int = 0
    max_replica_lag: float | None = 30.0
    saturation: float = 1.0
    saturated_status: Status = UNHEALTHY
    staff_details: bool = True

    def probed_aliases(self) -> tuple[str, ...]:
        """The aliases a round probes, in ``DATABASES`` order."""
        if self.databases is not None:
            return self.databases
        return tuple(alias for alias in connections.settings
                     if _vendor(alias) in _PROBED_VENDORS)

    def replica_aliases(self) -> tuple[str, ...]:
        """The probed aliases that the replica policy counts."""
        if self.replicas is not None:
            candidates: Iterable[str] = self.replicas
        else:
            candidates = [alias for alias, entry in connections.settings.items()
                          if (entry.get("TEST") or {}).get("MIRROR")
                          or alias in _router_replicas()]
        probed = self.probed_aliases()
        return tuple(alias for alias in candidates if alias in probed and alias != self.primary)


#: What each ``POOLKIT["HEALTH"]`` key accepts (for the messages and the docs).
SETTING_RULES: dict[str, str] = {
    "timeout": "a number of seconds > 0 and <= 30",
    "cache_ttl": "a number of seconds >= 0",
    "token": f"a string of at least {_MINIMUM_TOKEN_LENGTH} characters, or None",
    "token_header": "a non-empty HTTP header name",
    "databases": "a list of DATABASES aliases, or None for all",
    "primary": "a DATABASES alias, or None",
    "replicas": "a list of DATABASES aliases, or None for those with TEST['MIRROR']",
    "min_replicas": "an integer >= 0",
    "max_replica_lag": "a number of seconds > 0, or None for no limit",
    "saturation": "a number > 0 and <= 1 (share of the pool's capacity checked out)",
    "saturated_status": '"unhealthy" or "degraded"',
    "staff_details": "True or False",
}


def _router_replicas() -> set[str]:
    """The replicas of the router's clusters (``POOLKIT["ROUTING"]``); no I/O."""
    from ..routing.state import replica_state

    return {replica.alias for cluster in replica_state.snapshot()
            for replica in cluster.replicas}



def _vendor(alias: str) -> str:
    engine = str(connections.settings[alias].get("ENGINE", ""))
    if "sqlite" in engine:
        return "sqlite"
    if "postgres" in engine or engine.startswith("django_poolkit"):
        return "postgresql"
    return engine.rsplit(".", 1)[-1]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def parse_settings(
    value: Any,
    databases: Mapping[str, Any],
    report: Report,
) -> HealthSettings:
    """Validate ``POOLKIT["HEALTH"]`` (a ``conf.SECTION_PARSERS`` parser).

    Every problem goes to ``report(path, message, hint, check_id)``; the result keeps the
    default for any key that was wrong, so one mistake does not hide the others.
    """
    base = 'POOLKIT["HEALTH"]'
    if value is None:
        return HealthSettings()
    if not isinstance(value, Mapping):
        report(base, f"must be a dict, got {type(value).__name__}",
               'Write {"timeout": 0.5, "cache_ttl": 2}.', E_HEALTH_NOT_A_DICT)
        return HealthSettings()
    found: dict[str, Any] = {}
    for key, item, path, rule in known_items(value, base, SETTING_RULES, report,
                                             E_HEALTH_UNKNOWN_KEY):
        try:
            found[key] = _check_value(key, item, databases, path, report)
        except ValueError:
            report(path, f"must be {rule}, got {item!r}" if key != "token"
                   else f"must be {rule}", _HINTS[key], E_HEALTH_BAD_VALUE)
    if "primary" not in found and found.get("databases") is not None and (
            HealthSettings.primary not in found["databases"]):
        found["primary"] = None  # the default primary is simply not probed
    result = HealthSettings(**found)
    if result.primary is not None and result.databases is not None and (
            result.primary not in result.databases):
        report(f'{base}["primary"]', f'"{result.primary}" is not in "databases"',
               'Add it to "databases", or set "primary" to None.', E_HEALTH_CONFLICT)
    if result.replicas is not None:
        if result.primary in result.replicas:
            report(f'{base}["replicas"]', f'lists the primary "{result.primary}"',
                   "A database is either the primary or a replica.", E_HEALTH_CONFLICT)
        if result.min_replicas > len(result.replicas):
            report(f'{base}["min_replicas"]', f"is {result.min_replicas} but only "
                   f"{len(result.replicas)} replicas are listed",
                   'Lower "min_replicas" or list more "replicas".', E_HEALTH_CONFLICT)
    return result


_HINTS: dict[str, str] = {
    "timeout": "Keep it below your probe's timeout (Kubernetes: 1 s), e.g. 0.5.",
    "cache_ttl": "A few seconds, e.g. 2; 0 probes on every request.",
    "token": "Use a long random secret (not SECRET_KEY), e.g. from secrets.token_urlsafe(32).",
    "token_header": 'e.g. "X-Poolkit-Health-Token".',
    "databases": 'e.g. ["default", "replica1"].',
    "primary": 'The alias writes go to, e.g. "default".',
    "replicas": 'e.g. ["replica1", "replica2"].',
    "min_replicas": "How many replicas must be healthy for /ready/ to pass; 0 never fails it.",
    "max_replica_lag": "A replica further behind than this counts as degraded, e.g. 30.",
    "saturation": "1 means every connection of pool_size + max_overflow is checked out.",
    "saturated_status": '"degraded" keeps /ready/ at 200 while the pool is saturated.',
    "staff_details": "Whether logged-in staff users see the detailed report.",
}


def _check_value(
    key: str, item: Any, databases: Mapping[str, Any], path: str,
    report: Report,
) -> Any:
    """The checked value of one key, or ValueError when it breaks the key's rule."""
    if key == "timeout" and _is_number(item) and 0 < item <= 30:
        return float(item)
    if key == "cache_ttl" and _is_number(item) and item >= 0:
        return float(item)
    if key == "token" and (item is None or (
            isinstance(item, str) and len(item) >= _MINIMUM_TOKEN_LENGTH)):
        return item
    if key == "token_header" and isinstance(item, str) and item.strip():
        return item.strip()
    if key in ("databases", "replicas"):
        if item is None:
            return None
        if isinstance(item, (list, tuple)) and all(isinstance(name, str) for name in item):
            _known_aliases(item, databases, path, report)
            return tuple(item)
    if key == "primary" and (item is None or isinstance(item, str)):
        if item is not None:
            _known_aliases([item], databases, path, report)
        return item
    if key == "min_replicas" and isinstance(item, int) and not isinstance(item, bool) and (
            item >= 0):
        return item
    if key == "max_replica_lag" and (item is None or (_is_number(item) and item > 0)):
        return None if item is None else float(item)
    if key == "saturation" and _is_number(item) and 0 < item <= 1:
        return float(item)
    if key == "saturated_status" and item in (UNHEALTHY, DEGRADED):
        return item
    if key == "staff_details" and isinstance(item, bool):
        return item
    raise ValueError(key)


def _known_aliases(names: Sequence[str], databases: Mapping[str, Any], path: str,
                   report: Report) -> None:
    for name in names:
        if name not in databases:
            report(path, f'names the unknown database alias "{name}"'
                   + did_you_mean(name, databases),
                   "settings.DATABASES has: " + ", ".join(f'"{n}"' for n in databases) + ".",
                   E_HEALTH_UNKNOWN_ALIAS)


def health_settings() -> HealthSettings:
    """The validated ``POOLKIT["HEALTH"]`` of the current configuration."""
    section = get_settings().sections.get("HEALTH")
    return section if isinstance(section, HealthSettings) else HealthSettings()



def with_overrides(config: HealthSettings, **changes: Any) -> HealthSettings:
    """``config`` with some fields replaced (``poolcheck``'s ``--database``/``--timeout``)."""
    return replace(config, **{key: value for key, value in changes.items() if value is not None})
