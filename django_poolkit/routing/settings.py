"""``POOLKIT["ROUTING"]``: primary/replica clusters and the routing options, validated.

::

    POOLKIT = {
        "ROUTING": {
            "CLUSTERS": {
                "main": {"primary": "default", "replicas": ["replica1", "replica2"]},
                "events": {"primary": "events", "replicas": {"events_ro": {"weight": 2}},
                           "apps": ["tracking"], "strategy": "weighted"},
            },
            "max_lag": 5,          # seconds; every cluster unless it sets its own
            "pin_seconds": 15,     # read-your-writes window across requests
        },
    }

``conf`` calls :func:`parse` through ``conf.SECTION_PARSERS`` (so only ``conf`` reads
``POOLKIT``); every problem is reported with its key path and a ``poolkit.E02x`` id, and the
result is reachable with :func:`routing_settings`. A cluster without ``apps`` is the default
cluster: models of apps no cluster names are routed there. At most one cluster may be the
default; with none, unlisted models are left to Django (``None`` from the router).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._schema import (
    Field,
    Report,
    boolean,
    choice,
    did_you_mean,
    fields,
    http_token,
    integer,
    number,
    optional,
    read_fields,
)
from ..check_ids import (
    E_ROUTING_BAD_VALUE,
    E_ROUTING_CONFLICT,
    E_ROUTING_DUPLICATE,
    E_ROUTING_NOT_POSTGRES,
    E_ROUTING_TYPE,
    E_ROUTING_UNKNOWN_ALIAS,
    E_ROUTING_UNKNOWN_KEY,
)
from ..engines.params import vendor_of

__all__ = [
    "CLUSTER_OPTIONS",
    "ROUTING_OPTIONS",
    "ClusterConfig",
    "ReplicaConfig",
    "RoutingSettings",
    "parse",
    "routing_settings",
]

Strategy = Literal["round_robin", "random", "weighted"]
Fallback = Literal["primary", "raise"]
PinMode = Literal["lsn", "time", "off"]
SameSite = Literal["Lax", "Strict", "None"]


#: Ceilings of the routing numbers (seconds, bytes, a weight).
HOUR = 3600
DAY = 86_400
WAL_MAX = 2**63 - 1  # pg_lsn differences are int8
SHORTEST_PROBE = 0.05  # a probe thread looping faster than this only loads the replicas
MOST_WEIGHT = 1_000_000

#: Options a cluster may set for itself; at the ``ROUTING`` level they are every cluster's
#: default.
CLUSTER_OPTIONS: dict[str, Field] = fields(
    Field("strategy", "round_robin", '"round_robin", "random" or "weighted"',
          "How a read picks among the healthy replicas.",
          choice(("round_robin", "random", "weighted"))),
    Field("max_lag", 5.0, f"a number of seconds > 0 and <= {DAY}",
          "A replica further behind than this serves no reads.",
          number(above=0, at_most=DAY, as_float=True)),
    Field("readmit_lag", None, "a number of seconds > 0 and <= max_lag, or None for "
          "max_lag / 2", "A lagging replica comes back only once below this (hysteresis).",
          number(above=0, at_most=DAY, none=True, as_float=True)),
    Field("max_lag_bytes", None, f"an integer of bytes >= 0 and <= {WAL_MAX}, or None to not "
          "check", "A replica whose replay is more WAL bytes behind serves no reads.",
          integer(0, WAL_MAX, none=True)),
    Field("readmit_lag_bytes", None, "an integer of bytes >= 0 and <= max_lag_bytes, or None "
          "for max_lag_bytes / 2", "Byte lag below which a lagging replica comes back.",
          integer(0, WAL_MAX, none=True)),
    Field("fallback", "primary", '"primary" or "raise"',
          "What a read does when no replica qualifies: use the primary, or raise "
          "NoHealthyReplica.", choice(("primary", "raise"))),
)

#: Options only the ``ROUTING`` level takes (they are per process, not per cluster).
ROUTING_OPTIONS: dict[str, Field] = fields(
    Field("sticky", True, "True or False",
          "Keep the replica chosen first for the rest of a request or task scope.", boolean),
    Field("probe_interval", 1.0, f"a number of seconds >= {SHORTEST_PROBE} and <= {HOUR}, or "
          "None to probe only on demand",
          "How often a background thread refreshes replica health and lag.",
          number(at_least=SHORTEST_PROBE, at_most=HOUR, none=True, as_float=True)),
    Field("probe_timeout", 2.0, f"a number of seconds >= {SHORTEST_PROBE} and <= 60",
          "statement_timeout of one probe query.",
          number(at_least=SHORTEST_PROBE, at_most=60, as_float=True)),
    Field("pin_mode", "lsn", '"lsn", "time" or "off"',
          "Read-your-writes across requests: until a replica has replayed the write (lsn), "
          "for the whole window (time), or not at all (off).", choice(("lsn", "time", "off"))),
    Field("pin_seconds", 15.0, f"a number of seconds >= 1 and <= {DAY} (the signed token's "
          "timestamp counts whole seconds)",
          "Read-your-writes window across requests (the cap in lsn mode).",
          number(at_least=1, at_most=DAY, as_float=True)),
    Field("cookie_name", "poolkit_pin", "a cookie name: letters, digits and !#$%&'*+-.^_`|~ "
          "only (no space, ';', '=', quote or CR/LF)",
          "Name of the signed read-your-writes cookie.", http_token()),
    Field("cookie_secure", None, "True, False, or None to follow SESSION_COOKIE_SECURE",
          "Send the cookie over HTTPS only (None: as Django's session cookie).",
          optional(boolean)),
    Field("cookie_samesite", "Lax", '"Lax", "Strict", "None" or None',
          "SameSite attribute of the cookie.", choice(("Lax", "Strict", "None"), none=True)),
    Field("header_name", "X-Poolkit-Pin", "an HTTP header name (letters, digits and "
          "!#$%&'*+-.^_`|~ only: no space, ':' or CR/LF), or None to use no header",
          "Header that carries the same signed token for API clients.",
          http_token(none=True)),
)

#: A replica's own options (``"replicas": {"replica1": {"weight": 2}}``).
_REPLICA_OPTIONS: dict[str, Field] = fields(
    Field("weight", 1.0, f"a number > 0 and <= {MOST_WEIGHT}",
          'The replica\'s share of reads under strategy "weighted".',
          number(above=0, at_most=MOST_WEIGHT, as_float=True)),
)

_CLUSTER_ONLY = ("primary", "replicas", "apps")


@dataclass(frozen=True)
class ReplicaConfig:
    """One replica of a cluster. ``weight`` is its share of reads under ``"weighted"``."""

    alias: str
    weight: float = 1.0


@dataclass(frozen=True)
class ClusterConfig:
    """A primary and its replicas, with the cluster's effective routing options."""

    name: str
    primary: str
    replicas: tuple[ReplicaConfig, ...]
    apps: tuple[str, ...]
    strategy: Strategy
    max_lag: float
    readmit_lag: float
    max_lag_bytes: int | None
    readmit_lag_bytes: int | None
    fallback: Fallback

    @property
    def aliases(self) -> tuple[str, ...]:
        """The primary first, then the replicas."""
        return (self.primary, *(replica.alias for replica in self.replicas))


@dataclass(frozen=True)
class RoutingSettings:
    """The validated ``POOLKIT["ROUTING"]``: clusters plus the per-process options."""

    clusters: Mapping[str, ClusterConfig]
    sticky: bool
    probe_interval: float | None
    probe_timeout: float
    pin_mode: PinMode
    pin_seconds: float
    cookie_name: str
    cookie_secure: bool | None
    cookie_samesite: SameSite | None
    header_name: str | None
    default_cluster: str | None = None
    _by_alias: dict[str, ClusterConfig] = field(default_factory=dict, repr=False, compare=False)
    _by_app: dict[str, ClusterConfig] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for cluster in self.clusters.values():
            for alias in cluster.aliases:
                self._by_alias[alias] = cluster
            for app in cluster.apps:
                self._by_app[app] = cluster

    def cluster_of_alias(self, alias: str | None) -> ClusterConfig | None:
        """The cluster ``alias`` belongs to (as primary or replica), or None."""
        return self._by_alias.get(alias) if alias is not None else None

    def cluster_of_model(self, app_label: str, model_name: str | None) -> ClusterConfig | None:
        """The cluster serving a model: ``"app_label.ModelName"`` in some ``apps``, else its
        app label, else the default cluster (None when there is none)."""
        if model_name is not None:
            found = self._by_app.get(f"{app_label}.{model_name}".lower())
            if found is not None:
                return found
        found = self._by_app.get(app_label.lower())
        if found is not None:
            return found
        return self.clusters.get(self.default_cluster) if self.default_cluster else None


def _path(*parts: str) -> str:
    return 'POOLKIT["ROUTING"]' + "".join(f'["{part}"]' for part in parts)


def _read_options(
    section: Mapping[str, Any], options: Mapping[str, Field], path: tuple[str, ...],
    report: Report, *, skip: Iterable[str] = (), accepted: Iterable[str] | None = None,
) -> dict[str, Any]:
    return read_fields(section, options, lambda key: _path(*path, key), report,
                       unknown_key_id=E_ROUTING_UNKNOWN_KEY, bad_value_id=E_ROUTING_BAD_VALUE,
                       skip=skip, accepted=accepted)


def _is_postgres(database: Mapping[str, Any]) -> bool:
    return vendor_of(database) == "postgresql"


def _alias(
    value: Any, path: tuple[str, ...], databases: Mapping[str, Mapping[str, Any]],
    report: Report,
) -> str | None:
    if not isinstance(value, str) or not value:
        report(_path(*path), f"must be a DATABASES alias, got {value!r}",
               'Write the alias as a string, such as "default".', E_ROUTING_BAD_VALUE)
        return None
    if value not in databases:
        report(_path(*path), f'names the alias "{value}", which settings.DATABASES lacks'
               f"{did_you_mean(value, databases)}",
               "settings.DATABASES has: " + ", ".join(f'"{name}"' for name in databases) + ".",
               E_ROUTING_UNKNOWN_ALIAS)
        return None
    if not _is_postgres(databases[value]):
        report(_path(*path), f'names "{value}", which is not a PostgreSQL database',
               "Primaries and replicas are routed by their WAL positions: use a PostgreSQL "
               "ENGINE for every cluster member.", E_ROUTING_NOT_POSTGRES)
        return None
    return value


def _replicas(
    value: Any, path: tuple[str, ...], databases: Mapping[str, Mapping[str, Any]],
    report: Report,
) -> list[ReplicaConfig]:
    if value is None:
        return []
    entries: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        entries = list(value.items())
    elif isinstance(value, (list, tuple)):
        entries = [(item, None) for item in value]
    else:
        report(_path(*path), f"must be a list of aliases or a dict alias -> {{\"weight\": n}}, "
               f"got {type(value).__name__}", 'Write ["replica1", "replica2"].', E_ROUTING_TYPE)
        return []
    found: list[ReplicaConfig] = []
    for alias_value, options in entries:
        alias = _alias(alias_value, (*path, str(alias_value)), databases, report)
        weight = 1.0
        if options is not None:
            if not isinstance(options, Mapping):
                report(_path(*path, str(alias_value)), "must be a dict such as {\"weight\": 2}, "
                       f"got {type(options).__name__}", "Only \"weight\" can be set.",
                       E_ROUTING_TYPE)
                continue
            weight = _read_options(options, _REPLICA_OPTIONS, (*path, str(alias_value)),
                                   report).get("weight", weight)
        if alias is not None:
            found.append(ReplicaConfig(alias, weight))
    return found


def _apps(value: Any, path: tuple[str, ...], report: Report) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) and all(
            isinstance(item, str) and item for item in value):
        return tuple(item.lower() for item in value)
    report(_path(*path), f"must be a list of app labels or \"app_label.ModelName\", got "
           f"{value!r}", 'Write ["analytics", "shop.Order"].', E_ROUTING_BAD_VALUE)
    return ()


def _thresholds(options: dict[str, Any], path: tuple[str, ...], report: Report) -> None:
    """Fill the readmit thresholds and check they sit below the exclusion thresholds."""
    if options["readmit_lag"] is None:
        options["readmit_lag"] = options["max_lag"] / 2
    elif options["readmit_lag"] > options["max_lag"]:
        report(_path(*path, "readmit_lag"), f"must be <= max_lag ({options['max_lag']:g} s), "
               f"got {options['readmit_lag']:g}",
               "A replica is readmitted below readmit_lag, after being excluded above max_lag.",
               E_ROUTING_CONFLICT)
    if options["max_lag_bytes"] is None:
        if options["readmit_lag_bytes"] is not None:
            report(_path(*path, "readmit_lag_bytes"), "is set but max_lag_bytes is not",
                   "Set max_lag_bytes too, or remove readmit_lag_bytes.", E_ROUTING_CONFLICT)
    elif options["readmit_lag_bytes"] is None:
        options["readmit_lag_bytes"] = options["max_lag_bytes"] // 2
    elif options["readmit_lag_bytes"] > options["max_lag_bytes"]:
        report(_path(*path, "readmit_lag_bytes"),
               f"must be <= max_lag_bytes ({options['max_lag_bytes']}), got "
               f"{options['readmit_lag_bytes']}", "Lower it below max_lag_bytes.",
               E_ROUTING_CONFLICT)


def parse(
    value: Any, databases: Mapping[str, Mapping[str, Any]], report: Report
) -> RoutingSettings | None:
    """Validate ``POOLKIT["ROUTING"]`` (None when absent: no routing). Called by ``conf``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        report(_path(), f"must be a dict, got {type(value).__name__}",
               'Write {"CLUSTERS": {"main": {"primary": "default", "replicas": [...]}}}.',
               E_ROUTING_TYPE)
        return None
    top_keys = ["CLUSTERS", *CLUSTER_OPTIONS, *ROUTING_OPTIONS]
    shared = _read_options(value, {**CLUSTER_OPTIONS, **ROUTING_OPTIONS}, (), report,
                           skip=("CLUSTERS",), accepted=top_keys)
    defaults = {name: option.default for name, option in CLUSTER_OPTIONS.items()}
    defaults.update({key: shared[key] for key in CLUSTER_OPTIONS if key in shared})
    routing = {name: option.default for name, option in ROUTING_OPTIONS.items()}
    routing.update({key: shared[key] for key in ROUTING_OPTIONS if key in shared})

    raw_clusters = value.get("CLUSTERS")
    if not isinstance(raw_clusters, Mapping) or not raw_clusters:
        report(_path("CLUSTERS"), "is required: a dict of cluster name -> {primary, replicas}"
               if raw_clusters is None else
               f"must be a non-empty dict of clusters, got {raw_clusters!r}",
               'Write "CLUSTERS": {"main": {"primary": "default", "replicas": ["replica1"]}}.',
               E_ROUTING_TYPE)
        return None

    clusters: dict[str, ClusterConfig] = {}
    roles: dict[str, str] = {}
    apps_seen: dict[str, str] = {}
    defaults_clusters: list[str] = []
    cluster_keys = [*_CLUSTER_ONLY, *CLUSTER_OPTIONS]
    for name, section in raw_clusters.items():
        name = str(name)
        path = ("CLUSTERS", name)
        if not isinstance(section, Mapping):
            report(_path(*path), f"must be a dict, got {type(section).__name__}",
                   'Write {"primary": "default", "replicas": ["replica1"]}.', E_ROUTING_TYPE)
            continue
        own = _read_options(section, CLUSTER_OPTIONS, path, report, skip=_CLUSTER_ONLY,
                            accepted=cluster_keys)
        options = {**defaults, **own}
        _thresholds(options, path, report)
        if "primary" not in section:
            report(_path(*path, "primary"), "is required: the alias writes go to",
                   'Add "primary": "default".', E_ROUTING_TYPE)
            continue
        primary = _alias(section["primary"], (*path, "primary"), databases, report)
        replicas = _replicas(section.get("replicas"), (*path, "replicas"), databases, report)
        apps = _apps(section.get("apps"), (*path, "apps"), report)
        for alias, role in [(primary, "primary"), *((r.alias, "replica") for r in replicas)]:
            if alias is None:
                continue
            where = f'{role} of cluster "{name}"'
            if alias in roles:
                report(_path(*path), f'uses "{alias}" as {role}, but it is already the '
                       f"{roles[alias]}", "Each alias belongs to one cluster, in one role.",
                       E_ROUTING_DUPLICATE)
            roles[alias] = where
        for app in apps:
            if app in apps_seen:
                report(_path(*path, "apps"), f'lists "{app}", already routed to cluster '
                       f'"{apps_seen[app]}"', "Route each app to one cluster.", E_ROUTING_CONFLICT)
            apps_seen[app] = name
        if not apps:
            defaults_clusters.append(name)
        if primary is not None:
            clusters[name] = ClusterConfig(name=name, primary=primary, replicas=tuple(replicas),
                                           apps=apps, **options)
    if len(defaults_clusters) > 1:
        report(_path("CLUSTERS"), "has several clusters without \"apps\": "
               + ", ".join(f'"{name}"' for name in defaults_clusters),
               'Only one cluster may be the default; give the others "apps": [...].',
               E_ROUTING_CONFLICT)
    return RoutingSettings(clusters=clusters,
                           default_cluster=defaults_clusters[0] if defaults_clusters else None,
                           **routing)


def routing_settings() -> RoutingSettings | None:
    """The validated routing configuration, or None when ``POOLKIT`` has no ``ROUTING``."""
    from ..conf import get_settings

    found = get_settings().sections.get("ROUTING")
    return found if isinstance(found, RoutingSettings) else None
