"""``POOLKIT["HEALTH"]``, validated: what the probes reach, how long they may take, who sees
details, and the replica policy. Parsed through ``conf.SECTION_PARSERS`` (check ids
``poolkit.E030``-``E034``); :func:`health_settings` returns the current section.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from django.db import connections

from .._schema import (
    SHORTEST_WAIT,
    Field,
    Report,
    boolean,
    choice,
    did_you_mean,
    fields,
    http_token,
    integer,
    names,
    number,
    read_fields,
    secret,
    text,
)
from ..check_ids import (
    E_HEALTH_BAD_VALUE,
    E_HEALTH_CONFLICT,
    E_HEALTH_NOT_A_DICT,
    E_HEALTH_UNKNOWN_ALIAS,
    E_HEALTH_UNKNOWN_KEY,
)
from ..conf import get_settings
from ..engines.params import vendor_of

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
    staff_details: bool = False

    def probed_aliases(self) -> tuple[str, ...]:
        """The aliases a round probes, in ``DATABASES`` order."""
        if self.databases is not None:
            return self.databases
        return tuple(alias for alias in connections.settings
                     if vendor_of(connections.settings[alias]) in _PROBED_VENDORS)

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


#: Every ``POOLKIT["HEALTH"]`` key: what it accepts and the hint for a wrong value.
FIELDS: dict[str, Field] = fields(
    Field("timeout", HealthSettings.timeout, f"a number of seconds >= {SHORTEST_WAIT} and "
          "<= 30", "Keep it below your probe's timeout (Kubernetes: 1 s), e.g. 0.5.",
          number(at_least=SHORTEST_WAIT, at_most=30, as_float=True)),
    Field("cache_ttl", HealthSettings.cache_ttl, "a number of seconds >= 0 and <= 3600",
          "A few seconds, e.g. 2; 0 probes on every request.",
          number(at_least=0, at_most=3600, as_float=True)),
    Field("token", None, f"a string of {_MINIMUM_TOKEN_LENGTH} to 4096 characters, Latin-1 "
          "(what an HTTP header carries), with no control character and no space at either "
          "end, not SECRET_KEY, or None",
          "Use a long random secret (not SECRET_KEY), e.g. from secrets.token_urlsafe(32).",
          secret(min_length=_MINIMUM_TOKEN_LENGTH, none=True), secret=True),
    Field("token_header", HealthSettings.token_header, "an HTTP header name (letters, "
          "digits and !#$%&'*+-.^_`|~ only: no space, ':' or CR/LF)",
          'e.g. "X-Poolkit-Health-Token".', http_token()),
    Field("databases", None, "a non-empty list of DATABASES aliases, or None for all",
          'e.g. ["default", "replica1"]; an empty list would probe nothing and always pass.',
          names(none=True, non_empty=True)),
    Field("primary", HealthSettings.primary, "a DATABASES alias, or None",
          'The alias writes go to, e.g. "default".', text(none=True, min_length=0)),
    Field("replicas", None, "a list of DATABASES aliases, or None for those with "
          "TEST['MIRROR']", 'e.g. ["replica1", "replica2"].', names(none=True)),
    Field("min_replicas", HealthSettings.min_replicas, "an integer >= 0 and <= 10000",
          "How many replicas must be healthy for /ready/ to pass; 0 never fails it.",
          integer(0, 10_000)),
    Field("max_replica_lag", HealthSettings.max_replica_lag,
          "a number of seconds > 0 and <= 86400, or None for no limit",
          "A replica further behind than this counts as degraded, e.g. 30.",
          number(above=0, at_most=86_400, none=True, as_float=True)),
    Field("saturation", HealthSettings.saturation,
          "a number > 0 and <= 1 (share of the pool's capacity checked out)",
          "1 means every connection of pool_size + max_overflow is checked out.",
          number(above=0, at_most=1, as_float=True)),
    Field("saturated_status", HealthSettings.saturated_status, '"unhealthy" or "degraded"',
          '"degraded" keeps /ready/ at 200 while the pool is saturated.',
          choice((UNHEALTHY, DEGRADED))),
    Field("staff_details", HealthSettings.staff_details, "True or False",
          "Whether logged-in staff users with the django_poolkit.view_dashboard permission "
          "(or superusers) see the detailed report.", boolean),
)

#: What each ``POOLKIT["HEALTH"]`` key accepts (for the messages and the docs).
SETTING_RULES: dict[str, str] = {name: item.accepted for name, item in FIELDS.items()}


def _router_replicas() -> set[str]:
    """The replicas of the router's clusters (``POOLKIT["ROUTING"]``); no I/O."""
    from ..routing.state import replica_state

    return {replica.alias for cluster in replica_state.snapshot()
            for replica in cluster.replicas}



def _is_secret_key(token: str) -> bool:
    from django.conf import settings

    keys = [getattr(settings, "SECRET_KEY", None),
            *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    return any(isinstance(key, str) and hmac.compare_digest(token.encode("latin-1"),
                                                            key.encode("utf-8"))
               for key in keys)


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

    def known_aliases(key: str, item: Any, path: str) -> None:
        if key in ("databases", "replicas", "primary") and item is not None:
            _known_aliases([item] if key == "primary" else item, databases, path, report)
        if key == "token" and item is not None and _is_secret_key(item):
            report(path, "must not be SECRET_KEY (nor one of SECRET_KEY_FALLBACKS)",
                   "A token leaks in access logs and scrapers' configs; SECRET_KEY signs "
                   "sessions and pin cookies. Use secrets.token_urlsafe(32).",
                   E_HEALTH_BAD_VALUE)

    found = read_fields(value, FIELDS, lambda key: f'{base}["{key}"]', report,
                        unknown_key_id=E_HEALTH_UNKNOWN_KEY, bad_value_id=E_HEALTH_BAD_VALUE,
                        on_valid=known_aliases)
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


def _known_aliases(aliases: Sequence[str], databases: Mapping[str, Any], path: str,
                   report: Report) -> None:
    for name in aliases:
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
