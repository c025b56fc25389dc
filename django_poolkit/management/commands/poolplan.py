"""``manage.py poolplan``: size the pools for a deployment and check its connection budget.

Pools are sized per process; the server's ``max_connections`` is shared by every process of
every host. Given the process model (``--hosts``, ``--workers``, ``--threads``,
``--async-concurrency``; defaults from ``POOLKIT["DEPLOYMENT"]``), the command recommends
``pool_size`` and ``max_overflow`` for every pool by the sizing formulas (or ``--preset``) and
adds up, per server, what the configured and the recommended pools can open at most:
``(pool_size + max_overflow) x workers x hosts`` over every sync (and, with async concurrency,
async) pool on that server, plus ``--extra-connections``. That is compared with the server's
``max_connections`` minus its reserved slots, read from the server over a short-lived
connection, or given with ``--max-connections`` to plan offline.

When even the recommended pools cannot fit, the answer is a transaction-mode PgBouncer: the
command prints its ``default_pool_size``, ``max_client_conn`` and ``max_db_connections`` and
the small app-side pool to use behind it. Exit status 0; 1 when a server cannot be read (and
no ``--max-connections`` was given); 2 for bad arguments.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import get_settings
from ...exceptions import PoolkitConfigurationError
from ...ops import sizing
from ...ops.bouncer import read_bouncer
from ...ops.deployment import (
    FIELDS,
    MOST,
    Deployment,
    check_pool_names,
    deployment_settings,
)
from ...ops.plan import PLAN_FORMULAS, BouncerBudget, Plan, build_plan
from ...ops.serverinfo import ServerLimits, read_limits
from ..arguments import (
    TIMEOUT_RANGE,
    UsageExit2,
    bounded,
    field_argument,
    timeout_seconds,
)

#: Option -> ``Deployment`` field, for the options that override ``POOLKIT["DEPLOYMENT"]``.
_OVERRIDES = {
    "hosts": "hosts", "workers": "workers", "threads": "threads",
    "async_concurrency": "async_concurrency", "queries_per_request": "queries_per_request",
    "cores": "cores", "spindles": "spindles", "extra_connections": "extra_connections",
}


#: Bounds of the numeric arguments: wide enough for any real deployment, narrow enough that
#: a typo (or nan/inf) is a usage error instead of a traceback.
_positive = bounded(1, MOST, integer=True)
_non_negative = bounded(0, MOST, integer=True)
_seconds = timeout_seconds()


def _setting(name: str, *, integer: bool = True) -> Any:
    """The type of an option overriding POOLKIT["DEPLOYMENT"][name]: the setting's bounds."""
    return field_argument(FIELDS[name].check, integer=integer)


class Command(UsageExit2, BaseCommand):
    """Recommend pool sizes for a deployment and check them against max_connections."""

    help = ("Recommend pool_size/max_overflow per alias for a deployment (hosts x workers x "
            "threads) by the sizing formulas, and check every pool of every process against "
            "the server's max_connections; recommends PgBouncer when it cannot fit.")
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_argument_group(
            "deployment (defaults: POOLKIT[\"DEPLOYMENT\"], else 1 host, 1 worker, 1 thread)")
        group.add_argument("--hosts", type=_setting("hosts"), help="Machines or containers.")
        group.add_argument("--workers", type=_setting("workers"), help="Processes per host.")
        group.add_argument("--threads", type=_setting("threads"),
                           help="Request threads per process.")
        group.add_argument("--async-concurrency", type=_setting("async_concurrency"),
                           help="Concurrent async requests per process (counts async pools).")
        group.add_argument("--queries-per-request",
                           type=_setting("queries_per_request", integer=False),
                           help="Average queries per request (async formula; default 1).")
        group.add_argument("--cores", type=_setting("cores"),
                           help="CPU cores per host (default: this machine's).")
        group.add_argument("--spindles", type=_setting("spindles"),
                           help="Disk spindles (0 for SSDs; default 0).")
        group.add_argument("--extra-connections", type=_setting("extra_connections"),
                           help="Connections outside the pools (cron, shells, migrations).")
        parser.add_argument("--db-cores", type=_positive,
                            help="The database server's cores, for PgBouncer's "
                                 "default_pool_size (default: --cores).")
        parser.add_argument("--formula", choices=PLAN_FORMULAS, default="threads",
                            help="How to size the sync pools: threads (default: the cores "
                                 "rule capped at the threads, overflow up to them), cores "
                                 "(cores x 2 + spindles) or production (cores x 2 + 4).")
        parser.add_argument("--preset", choices=tuple(sizing.PRESETS),
                            help="Recommend this preset instead of a formula.")
        parser.add_argument("--database", action="append", dest="databases", metavar="ALIAS",
                            help="Only these pools (repeatable). Default: every pool.")
        parser.add_argument("--max-connections", type=_positive,
                            help="Plan offline against this max_connections.")
        parser.add_argument("--reserved-connections", type=_non_negative, default=3,
                            help="With --max-connections: reserved slots (default 3, "
                                 "PostgreSQL's superuser_reserved_connections).")
        parser.add_argument("--format", choices=("table", "json"), default="table",
                            help="table (default) or json (stable keys).")
        parser.add_argument("--timeout", type=_seconds, default=2.0, metavar="SECONDS",
                            help="How long each server may take to answer (default 2).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = get_settings()
        except PoolkitConfigurationError as error:
            raise CommandError(str(error), returncode=2) from None
        deployment = deployment_settings() or Deployment()
        changes = {field: options[option] for option, field in _OVERRIDES.items()
                   if options[option] is not None}
        if options["databases"]:
            changes["databases"] = tuple(options["databases"])
        deployment = replace(deployment, **changes)
        for name, suggestion in check_pool_names(deployment, config):
            raise CommandError(f"unknown database alias {name!r}"
                               + (f"; did you mean {suggestion!r}?" if suggestion else ""),
                               returncode=2)
        if not TIMEOUT_RANGE[0] <= options["timeout"] <= TIMEOUT_RANGE[1]:
            raise CommandError("--timeout must be >= 0.001 and <= 30 seconds", returncode=2)
        source: Literal["server", "option"] = "server"
        if options["max_connections"] is not None:
            if options["reserved_connections"] >= options["max_connections"]:
                raise CommandError("--reserved-connections must be below --max-connections",
                                   returncode=2)
            fixed = ServerLimits(options["max_connections"], options["reserved_connections"])
            source = "option"

            def limits(alias: str) -> ServerLimits:
                return fixed
        else:
            def limits(alias: str) -> ServerLimits:
                return read_limits(alias, options["timeout"])

        plan = build_plan(deployment, config, limits, preset=options["preset"],
                          formula=options["formula"],
                          limits_source=source, db_cores=options["db_cores"],
                          bouncer=lambda alias: read_bouncer(alias, options["timeout"]))
        if options["format"] == "json":
            self.stdout.write(json.dumps(plan.as_dict(), indent=2))
        else:
            self._table(plan)
        unreachable = [budget.server for budget in plan.servers if budget.error]
        if unreachable:
            raise CommandError("cannot read max_connections of " + ", ".join(unreachable)
                               + "; pass --max-connections to plan offline", returncode=1)
        unread = [budget.pgbouncer for budget in plan.bouncers if budget.error]
        if unread:
            raise CommandError("cannot read the running PgBouncer (or the server behind it) "
                               "at " + ", ".join(unread), returncode=1)

    def _rows(self, rows: list[tuple[str, ...]], indent: str = "  ") -> None:
        widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
        for number, row in enumerate(rows):
            line = indent + "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            self.stdout.write(self.style.SQL_FIELD(line) if number == 0 else line)

    def _table(self, plan: Plan) -> None:
        deployment = plan.deployment
        async_part = (f", async concurrency {deployment.async_concurrency} at "
                      f"{deployment.queries_per_request:g} queries/request"
                      if deployment.async_concurrency else "")
        self.stdout.write(self.style.MIGRATE_HEADING(
            f"Deployment: {deployment.hosts} host(s) x {deployment.workers} worker(s) = "
            f"{deployment.processes} processes, {deployment.threads} thread(s) each"
            f"{async_part}; {deployment.effective_cores} cores, {deployment.spindles} "
            f"spindles; {deployment.extra_connections} extra connections"))
        self.stdout.write("")
        rows: list[tuple[str, ...]] = [
            ("POOL", "SERVER", "CONFIGURED", "ORIGIN", "RECOMMENDED", "RULE")]
        for pool in plan.pools:
            configured = pool.configured
            overflow = ("unlimited" if configured.max_overflow < 0
                        else str(configured.max_overflow))
            rows.append((f"{pool.alias} ({pool.kind})", pool.server,
                         f"{configured.pool_size} + {overflow}", pool.origin,
                         f"{pool.recommended.pool_size} + {pool.recommended.max_overflow}",
                         pool.rule))
        if plan.pools:
            self._rows(rows)
        for warning in plan.warnings:
            self.stdout.write(self.style.WARNING(f"  warning: {warning['message']}"))
        if plan.skipped:
            self.stdout.write(f"  not counted (SQLite): {', '.join(plan.skipped)}")
        for number, behind in enumerate(plan.bouncers):
            if plan.pools or number:
                self.stdout.write("")
            self._bouncer(behind, deployment)
        for budget in plan.servers:
            self.stdout.write("")
            self.stdout.write(self.style.MIGRATE_HEADING(
                f"Server {budget.server} ({', '.join(budget.aliases)})"))
            limits = budget.limits
            if limits is None:
                self.stdout.write(self.style.ERROR(
                    f"  cannot read max_connections ({budget.error})"))
                continue
            source = "from the server" if budget.limits_source == "server" else "given"
            reserved = limits.superuser_reserved_connections + limits.reserved_connections
            self.stdout.write(f"  max_connections {limits.max_connections} - reserved "
                              f"{reserved} = {limits.available} available ({source})")
            self._verdict("configured", budget.configured_total, limits.available, deployment)
            self._verdict("recommended", budget.recommended_total, limits.available,
                          deployment)
            bouncer = budget.pgbouncer
            if bouncer is not None:
                self._pgbouncer(bouncer, budget.client_connections)

    def _bouncer(self, budget: BouncerBudget, deployment: Deployment) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(
            f"PgBouncer {budget.pgbouncer} ({', '.join(budget.aliases)})"))
        if budget.error is not None:
            self.stdout.write(self.style.ERROR(
                f"  cannot read the running PgBouncer or the server behind it ({budget.error})"))
            return
        server = budget.server_limits
        assert server is not None
        clients = ("unlimited (max_overflow=-1)" if budget.clients is None else
                   f"{budget.clients // deployment.processes} per process x "
                   f"{deployment.processes} processes = {budget.clients}")
        self.stdout.write(f"  client connections (pool_size + max_overflow): {clients}")
        opens = ("an unknown number of server connections (no pool size reported)"
                 if budget.server_connections is None
                 else f"at most {budget.server_connections} server connection(s)")
        self.stdout.write(
            f"  PgBouncer opens {opens} for "
            f"{', '.join(budget.databases)}; the server has {server.available} available "
            f"(max_connections {server.max_connections} - reserved "
            f"{server.max_connections - server.available}"
            + (f", {deployment.extra_connections} extra" if deployment.extra_connections
               else "") + "; read from the running PgBouncer and server)")
        if not budget.limits:
            self.stdout.write(self.style.WARNING(
                "  its console reports none of PgBouncer's limits (max_client_conn, pool "
                "sizes): plan them from the pooler's own configuration"))
            return
        rows: list[tuple[str, ...]] = [
            ("LIMIT", "VALUE", "ADMITS", "DEMAND", "HOSTS THAT FIT", "BEYOND IT")]
        for limit in budget.limits:
            rows.append((limit.name, str(limit.value),
                         "-" if limit.admits is None else str(limit.admits),
                         "unlimited" if limit.demand is None else str(limit.demand),
                         "any" if limit.hosts_admitted is None else str(limit.hosts_admitted),
                         "connections refused" if limit.effect == "refused"
                         else "transactions wait in PgBouncer"))
        self._rows(rows)
        first = budget.first
        if first is not None:
            line = (f"  hit first: {first.name} {first.value}"
                    + (f", at {first.hosts_admitted + 1} host(s)"
                       if first.hosts_admitted is not None else ""))
            hit = [limit.name for limit in budget.limits if limit.hit]
            line += ("; the deployment as declared goes beyond " + ", ".join(hit)
                     if hit else "; the deployment as declared is within every limit")
            style = (self.style.ERROR if budget.fits is False else
                     self.style.WARNING if hit else self.style.SUCCESS)
            self.stdout.write(style(line))

    def _verdict(self, label: str, total: int | None, available: int,
                 deployment: Deployment) -> None:
        if total is None:
            self.stdout.write(self.style.ERROR(
                f"  {label}: unlimited (max_overflow=-1): no server can fit it"))
            return
        extra = (f" + {deployment.extra_connections} extra"
                 if deployment.extra_connections else "")
        per_process = (total - deployment.extra_connections) // deployment.processes
        text = (f"  {label}: {per_process} per process x {deployment.processes} processes"
                f"{extra} = {total}")
        if total <= available:
            self.stdout.write(self.style.SUCCESS(f"{text}: fits, headroom {available - total}"))
        else:
            self.stdout.write(self.style.ERROR(
                f"{text}: does NOT fit, {total - available} over"))

    def _pgbouncer(self, bouncer: sizing.PgBouncerSettings, clients: int) -> None:
        self.stdout.write(self.style.WARNING(
            "  The deployment needs more connections than the server has: put PgBouncer in "
            "transaction mode in front of it."))
        self.stdout.write("  pgbouncer.ini:")
        for line in (
            "pool_mode = transaction",
            f"default_pool_size = {bouncer.default_pool_size}",
            f"max_db_connections = {bouncer.max_db_connections}",
            f"max_client_conn = {bouncer.max_client_conn}",
        ):
            self.stdout.write(f"    {line}")
        self.stdout.write(
            f"  app side (each process, per alias): pool_size={bouncer.app_pool.pool_size}, "
            f"max_overflow={bouncer.app_pool.max_overflow}; point DATABASES at PgBouncer, "
            "and set DISABLE_SERVER_SIDE_CURSORS=True (prepared statements stay off: "
            "Django's default prepare_threshold=None).")
        self.stdout.write(f"  ({clients} client connections share "
                          f"{bouncer.max_db_connections} server connections.)")
