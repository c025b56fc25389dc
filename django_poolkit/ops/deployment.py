"""``POOLKIT["DEPLOYMENT"]``, validated: the process model (hosts, workers, threads) the
connection budget counts, and which server each pool connects to.

A pool's size is per process; the server's ``max_connections`` is shared by every process of
every host. The ``poolkit.W040`` check, ``manage.py poolplan`` and the docs' budget table read
this section; the arithmetic is :mod:`~django_poolkit.ops.sizing`, the plan
:mod:`~django_poolkit.ops.plan`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import connections

from .._schema import Field, Report, fields, integer, names, number, read_fields
from ..check_ids import E_DEPLOYMENT_BAD_VALUE, E_DEPLOYMENT_NOT_A_DICT, E_DEPLOYMENT_UNKNOWN_KEY
from ..conf import PoolkitSettings, PoolSettings, get_settings, parse_url
from ..engines.params import vendor_of
from . import sizing

__all__ = [
    "SETTING_RULES",
    "Deployment",
    "check_pool_names",
    "deployment_settings",
    "parse",
    "server_of",
]


@dataclass(frozen=True)
class Deployment:
    """``POOLKIT["DEPLOYMENT"]``, validated: the process model of one deployment.

    ``processes`` is ``workers x hosts``; an alias's async pool is counted only when
    ``async_concurrency`` says the processes serve async requests.
    """

    hosts: int = 1
    workers: int = 1
    threads: int = 1
    async_concurrency: int | None = None
    queries_per_request: float = 1.0
    cores: int | None = None
    spindles: int = 0
    extra_connections: int = 0
    databases: tuple[str, ...] | None = None

    @property
    def processes(self) -> int:
        """Processes across every host."""
        return self.workers * self.hosts

    @property
    def effective_cores(self) -> int:
        """``cores``, or the ``os.cpu_count()`` default."""
        return self.cores or sizing.default_cores()


_HINT = "Describe the deployment as it runs in production."

#: Ceilings of a deployment's counts (the commands' arguments share them).
MOST = 1_000_000
MOST_CORES = 4096
FEWEST_QUERIES = 0.001
MOST_QUERIES = 10_000

#: Every ``POOLKIT["DEPLOYMENT"]`` key and what it accepts.
FIELDS: dict[str, Field] = fields(
    Field("hosts", Deployment.hosts,
          f"an integer >= 1 and <= {MOST} (machines or containers running the app)", _HINT,
          integer(1, MOST)),
    Field("workers", Deployment.workers,
          f"an integer >= 1 and <= {MOST} (processes per host, e.g. gunicorn --workers)",
          _HINT, integer(1, MOST)),
    Field("threads", Deployment.threads,
          f"an integer >= 1 and <= {MOST} (request threads per process, e.g. gunicorn "
          "--threads)", _HINT, integer(1, MOST)),
    Field("async_concurrency", Deployment.async_concurrency,
          f"an integer >= 1 and <= {MOST} (concurrent async requests per process), or None",
          _HINT, integer(1, MOST, none=True)),
    Field("queries_per_request", Deployment.queries_per_request,
          f"a number >= {FEWEST_QUERIES} and <= {MOST_QUERIES} (average queries per request, "
          "async formula)", _HINT,
          number(at_least=FEWEST_QUERIES, at_most=MOST_QUERIES, as_float=True)),
    Field("cores", Deployment.cores,
          f"an integer >= 1 and <= {MOST_CORES} (CPU cores per host), or None for "
          "os.cpu_count()", _HINT, integer(1, MOST_CORES, none=True)),
    Field("spindles", Deployment.spindles,
          f"an integer >= 0 and <= {MOST} (disks a query waits on; 0 for SSDs)", _HINT,
          integer(0, MOST)),
    Field("extra_connections", Deployment.extra_connections,
          f"an integer >= 0 and <= {MOST} (connections outside the pools: cron, shells, "
          "migrations, probes, other apps)", _HINT, integer(0, MOST)),
    Field("databases", Deployment.databases,
          "a list of pool names the deployment uses, or None for every pool", _HINT,
          names(none=True)),
)

#: What each ``POOLKIT["DEPLOYMENT"]`` key accepts, for messages and docs.
SETTING_RULES: dict[str, str] = {name: item.accepted for name, item in FIELDS.items()}


def parse(value: Any, databases: Mapping[str, Any], report: Report) -> Deployment | None:
    """Validate ``POOLKIT["DEPLOYMENT"]`` (a ``conf.SECTION_PARSERS`` parser).

    None when the section is absent: the budget check then has nothing to check. Every
    problem goes to ``report``; a wrong key keeps its default so the others are still checked.
    Pool names in ``databases`` are checked by the W040 check, which sees ``ENGINES`` too.
    """
    base = 'POOLKIT["DEPLOYMENT"]'
    if value is None:
        return None
    if not isinstance(value, Mapping):
        report(base, f"must be a dict, got {type(value).__name__}",
               'Write {"hosts": 2, "workers": 4, "threads": 8}.', E_DEPLOYMENT_NOT_A_DICT)
        return None
    found = read_fields(value, FIELDS, lambda key: f'{base}["{key}"]', report,
                        unknown_key_id=E_DEPLOYMENT_UNKNOWN_KEY,
                        bad_value_id=E_DEPLOYMENT_BAD_VALUE)
    return Deployment(**found)


def check_pool_names(deployment: Deployment, config: PoolkitSettings) -> list[tuple[str, str]]:
    """``(name, suggestion)`` for every name in ``databases`` that no pool has."""
    unknown = []
    for name in deployment.databases or ():
        if name not in config.pools:
            match = difflib.get_close_matches(name, list(config.pools), n=1, cutoff=0.6)
            unknown.append((name, match[0] if match else ""))
    return unknown


def deployment_settings() -> Deployment | None:
    """The validated ``POOLKIT["DEPLOYMENT"]``, or None when the project declares none."""
    section = get_settings().sections.get("DEPLOYMENT")
    return section if isinstance(section, Deployment) else None


def server_of(alias: str, pool: PoolSettings) -> str | None:
    """``host:port`` of the PostgreSQL server a pool connects to, or None for SQLite (or a
    vendor poolkit does not pool). Pools on one server share its ``max_connections``."""
    if pool.url is not None:
        url = parse_url(pool.url)
        if url.get_backend_name() != "postgresql":
            return None
        return f"{url.host or 'localhost'}:{url.port or 5432}"
    entry = connections.settings.get(alias) or {}
    if vendor_of(entry) != "postgresql":
        return None
    return f"{entry.get('HOST') or 'localhost'}:{entry.get('PORT') or 5432}"

