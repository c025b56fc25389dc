"""``manage.py poolcheck``: the health views' probes from the command line.

For container health checks and deploy hooks: exit status 0 when healthy (and degraded, unless
``--strict``), 1 when unhealthy. ``--format json`` prints the same JSON as ``health/db/`` with
details. Runs in-process with no cache, so it reports what this host can reach now; pool
figures are this process's (usually unbuilt) pools, not a running server's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import health
from ...exceptions import PoolkitConfigurationError
from ..arguments import TIMEOUT_RANGE, UsageExit2, timeout_seconds


class Command(UsageExit2, BaseCommand):
    """Probe every configured database once and exit 0 (healthy) or 1 (not).

    Without ``--database`` the verdict is the readiness policy's (a secondary database down
    is degraded); every database named with ``--database`` must be healthy.
    """

    help = ("Probe the databases like the health/ready/ and health/db/ views; exit 0 when "
            "healthy, 1 when unhealthy.")
    # System checks take time and may need the database: a health check must not.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=("table", "json"), default="table",
                            help="table (default) or json (the health/db/ body).")
        parser.add_argument("--database", action="append", dest="databases", metavar="ALIAS",
                            help="Probe only this alias (repeatable). Default: POOLKIT"
                            '["HEALTH"]["databases"], else every database.')
        parser.add_argument("--timeout", type=timeout_seconds(),
                            default=None,
                            help='Seconds each probe may take (default: POOLKIT["HEALTH"]'
                            '["timeout"]).')
        parser.add_argument("--strict", action="store_true",
                            help="Exit 1 when degraded too.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = health.health_settings()
        except PoolkitConfigurationError as error:
            # Not "unreachable": nothing was probed, the settings are wrong.
            raise CommandError(f"configuration error: {error}", returncode=2) from None
        aliases = options["databases"]
        if aliases:
            unknown = [alias for alias in aliases if alias not in _all_aliases()]
            if unknown:
                raise CommandError(f"unknown database alias {unknown[0]!r}; known: "
                                   + ", ".join(_all_aliases()), returncode=2)
        timeout = options["timeout"]
        if timeout is not None and not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1]:
            raise CommandError("--timeout must be >= 0.001 and <= 30 seconds", returncode=2)
        config = health.with_overrides(
            config, cache_ttl=0.0, timeout=timeout,
            databases=tuple(aliases) if aliases else None)
        report = health.HealthChecker(config).check()
        if aliases:
            # Databases named on the command line are each required, primary or not.
            report = replace(report, status=health.worst(
                [report.status, *(db.status for db in report.databases.values())]))
        if options["format"] == "json":
            self.stdout.write(json.dumps(report.as_dict(details=True), indent=2))
        else:
            self._table(report)
        if report.status == health.UNHEALTHY or (
                options["strict"] and report.status == health.DEGRADED):
            raise CommandError(f"databases are {report.status}", returncode=1)

    def _table(self, report: health.HealthReport) -> None:
        rows = [("ALIAS", "STATUS", "ROLE", "LATENCY", "LAG", "POOL", "DETAIL")]
        for alias, verdict in report.databases.items():
            pool = verdict.pool
            rows.append((
                alias, verdict.status, verdict.role or "-",
                f"{verdict.latency_ms:.1f} ms" if verdict.latency_ms is not None else "-",
                f"{verdict.lag_s:.1f} s" if verdict.lag_s is not None else "-",
                f"{pool.get('pool_checked_out', 0)}/{pool.get('pool_capacity') or '-'}",
                "; ".join(reason.split(": ", 1)[-1] for reason in verdict.reasons) or "ok",
            ))
        widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]) - 1)]
        style: dict[str, Any] = {
            health.HEALTHY: self.style.SUCCESS, health.DEGRADED: self.style.WARNING,
            health.UNHEALTHY: self.style.ERROR}
        for number, row in enumerate(rows):
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            if number:
                cells[1] = style[row[1]](cells[1])
            self.stdout.write("  ".join([*cells, row[-1]]).rstrip())
        overall = style[report.status](report.status)
        policy = "; ".join(r for r in report.reasons if ":" not in r)
        self.stdout.write(f"\nstatus: {overall}" + (f" ({policy})" if policy else ""))


def _all_aliases() -> list[str]:
    from django.db import connections

    return list(connections.settings)
