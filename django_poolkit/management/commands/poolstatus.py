"""``manage.py poolstatus``: every pool's settings, this process's figures and the server's view.

A pool's gauges and counters describe one process, and a fresh ``manage.py`` process has
built no pool, so the command also asks PostgreSQL, which sees every process: the
connections to each alias's database grouped by ``application_name`` (poolkit names its
connections ``poolkit:{alias}:{host}:{pid}``, so a row is one pool of one process) and by
state, ``max_connections``, the reserved slots and the headroom left, and for a server in
recovery its role and replay lag (for a routed replica, the router's measurement or the same
rule against its primary). The server is asked over one short-lived connection of its
own (``poolkit-ops:<alias>:<pid>``) with a short ``connect_timeout`` and
``statement_timeout``, never through an application pool, and the wait is bounded.

``--format table`` (default) is for people; ``--format json`` has the stable keys documented
in docs/operations.rst. ``--watch SECONDS`` repeats until interrupted (JSON
then prints one document per line). Exit status: 0, or 1 when a database could not be reached; 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...api import pool_stats
from ...conf import KNOBS, PoolkitSettings, PoolSettings, get_settings, shown_value
from ...engines import engine_registry
from ...engines.params import connection_target
from ...exceptions import PoolkitConfigurationError, ServerUnreachable
from ...ops.bouncer import BouncerSnapshot, admin_target, read_bouncer
from ...ops.deployment import server_of
from ...ops.serverinfo import ServerSnapshot, read_server
from ..arguments import TIMEOUT_RANGE, UsageExit2, bounded, timeout_seconds

#: Settings the table always shows; the others only when something other than the
#: built-in default set them (JSON always has every one).
_ALWAYS_SHOWN = ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping")

# Below this share of the server's available slots left, the headroom is shown as a warning.
_LOW_HEADROOM = 0.1


def _settings(pool: PoolSettings) -> dict[str, dict[str, Any]]:
    return {name: {"value": shown_value(name, getattr(pool, name)),
                   "origin": pool.origins.get(name, "default")} for name in KNOBS}


def bouncer_status(alias: str, pool: PoolSettings, timeout: float) -> dict[str, Any] | None:
    """PgBouncer's view for an alias with ``pgbouncer`` set (None otherwise): ``admin`` (where
    its console is, never a password), ``error`` (a fixed phrase) or the snapshot's keys."""
    if pool.pgbouncer is None:
        return None
    snapshot: BouncerSnapshot | None = None
    error: str | None = None
    try:
        snapshot = read_bouncer(alias, timeout)
    except ServerUnreachable as problem:
        error = str(problem)
    return {"admin": admin_target(alias, pool), "error": error,
            **(snapshot.as_dict() if snapshot is not None else {})}


def collect(aliases: Sequence[str], config: PoolkitSettings, timeout: float) -> dict[str, Any]:
    """One round: the JSON document ``--format json`` prints (keys: docs/operations.rst)."""
    databases = []
    reachable = True
    for alias in aliases:
        pool = config.pools[alias]
        server_key = server_of(alias, pool)
        snapshot: ServerSnapshot | None = None
        error: str | None = None
        if server_key is not None:
            try:
                snapshot = read_server(alias, timeout)
            except ServerUnreachable as problem:
                error = str(problem)
                reachable = False
        bouncer = bouncer_status(alias, pool, timeout)
        if bouncer is not None and bouncer["error"]:
            reachable = False
        pools = [pool_stats(alias).as_dict()]
        if engine_registry.built(alias, "async") is not None:
            pools.append(pool_stats(alias, kind="async").as_dict())
        databases.append({
            "alias": alias,
            "vendor": "postgresql" if server_key is not None else "other",
            "server": server_key,
            "target": connection_target(alias, pool),
            "settings": _settings(pool),
            "pools": pools,
            "server_status": snapshot.as_dict() if snapshot is not None else None,
            "error": error,
            "pgbouncer": bouncer,
        })
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "status": "ok" if reachable else "unreachable",
        "databases": databases,
    }


class Command(UsageExit2, BaseCommand):
    """Show each pool's settings (with origins), this process's figures and the server's."""

    help = ("Show every pool's effective settings and where each came from, this process's "
            "pool figures, and the server's connections from every process, max_connections "
            "and headroom. Exit 1 when a database cannot be reached.")
    # A status command must work when the checks would fail, and fast.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", action="append", dest="databases", metavar="ALIAS",
                            help="Only this alias or engine name (repeatable). Default: all.")
        parser.add_argument("--format", choices=("table", "json"), default="table",
                            help="table (default) or json (stable keys).")
        parser.add_argument("--watch", type=bounded(0.5, 86_400, unit="seconds"), default=None,
                            metavar="SECONDS",
                            help="Refresh every SECONDS until interrupted (Ctrl-C).")
        parser.add_argument("--timeout", type=timeout_seconds(),
                            default=2.0, metavar="SECONDS",
                            help="How long each server may take to answer (default 2).")
        # For tests and scripts: stop --watch after this many rounds.
        parser.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = get_settings()
        except PoolkitConfigurationError as error:
            raise CommandError(str(error), returncode=2) from None
        aliases = options["databases"] or list(config.pools)
        for alias in aliases:
            if alias not in config.pools:
                raise CommandError(f"unknown database alias {alias!r}; known: "
                                   + ", ".join(config.pools), returncode=2)
        watch = options["watch"]
        if watch is not None and watch <= 0:
            raise CommandError("--watch must be a number of seconds > 0", returncode=2)
        timeout = options["timeout"]
        if not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1]:
            raise CommandError("--timeout must be >= 0.001 and <= 30 seconds", returncode=2)
        iterations = options["iterations"]
        render: Callable[[dict[str, Any]], None] = (
            self._json_line if watch is not None and options["format"] == "json"
            else self._json if options["format"] == "json" else self._table)
        rounds = 0
        document: dict[str, Any] = {}
        try:
            while True:
                document = collect(aliases, config, timeout)
                if watch is not None and rounds and options["format"] == "table":
                    self.stdout.write("")
                render(document)
                self.stdout.flush()
                rounds += 1
                if watch is None or (iterations is not None and rounds >= iterations):
                    break
                time.sleep(watch)
        except KeyboardInterrupt:
            # Ctrl-C ends --watch; the exit status is the last complete round's.
            pass
        if document.get("status") == "unreachable":
            failed = [entry["alias"] for entry in document["databases"] if entry["error"]]
            failed += [f"{entry['alias']}'s PgBouncer console" for entry in document["databases"]
                       if entry["pgbouncer"] and entry["pgbouncer"]["error"]]
            raise CommandError("cannot reach " + ", ".join(failed), returncode=1)

    def _json(self, document: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(document, indent=2))

    def _json_line(self, document: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(document, separators=(",", ":")))

    def _rows(self, rows: list[tuple[str, ...]], indent: str = "  ") -> None:
        """Print rows as aligned columns, the first row as a styled header."""
        widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
        for number, row in enumerate(rows):
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            line = indent + line.rstrip()
            self.stdout.write(self.style.SQL_FIELD(line) if number == 0 else line)

    def _table(self, document: dict[str, Any]) -> None:
        self.stdout.write(f"poolstatus at {document['generated_at']} from "
                          f"{document['host']} (pid {document['pid']})")
        for entry in document["databases"]:
            target = entry["target"]
            where = (f"{target['user'] + '@' if target['user'] else ''}"
                     f"{entry['server'] + '/' if entry['server'] else ''}{target['database']}")
            self.stdout.write("")
            self.stdout.write(self.style.MIGRATE_HEADING(f"{entry['alias']}  {where}"))
            settings_rows: list[tuple[str, ...]] = [("SETTING", "VALUE", "ORIGIN")]
            for name, item in entry["settings"].items():
                if name in _ALWAYS_SHOWN or item["origin"] != "default":
                    settings_rows.append((name, _text(item["value"]), item["origin"]))
            self._rows(settings_rows)
            self.stdout.write("")
            pool_rows: list[tuple[str, ...]] = [
                ("THIS PROCESS", "SIZE", "OUT", "IN", "OVERFLOW", "CAPACITY", "WAITING",
                 "OPENED", "CHECKOUTS", "TIMEOUTS", "INVALIDATED", "WAIT MAX")]
            for pool in entry["pools"]:
                gauges, counters = pool["gauges"], pool["counters"]
                pool_rows.append((
                    f"{pool['kind']} pool" + ("" if pool["built"] else " (not built)"),
                    str(gauges["pool_size"]), str(gauges["pool_checked_out"]),
                    str(gauges["pool_checked_in"]), str(gauges["pool_overflow"]),
                    _text(gauges["pool_capacity"]), _text(gauges.get("pool_waiting")),
                    str(counters["connections_opened"]),
                    str(counters["checkouts"]), str(counters["timeouts"]),
                    str(counters["invalidations"]),
                    f"{counters['checkout_wait_ms_max']:.1f} ms"))
            self._rows(pool_rows)
            self.stdout.write("")
            self._server(entry)
            if entry["pgbouncer"] is not None:
                self.stdout.write("")
                self._bouncer(entry["pgbouncer"])

    def _server(self, entry: dict[str, Any]) -> None:
        if entry["error"]:
            self.stdout.write(self.style.ERROR(f"  server: unreachable ({entry['error']})"))
            return
        status = entry["server_status"]
        if status is None:
            self.stdout.write("  server: none (not a PostgreSQL database)")
            return
        role = status["role"]
        if status["replay_lag_s"] is not None:
            role += f", replay lag {status['replay_lag_s']:.1f} s"
        self.stdout.write(f"  server: {role}, PostgreSQL {status['server_version']}")
        headroom = (f"  slots: max_connections {status['max_connections']} - reserved "
                    f"{status['superuser_reserved_connections'] + status['reserved_connections']}"
                    f" = {status['available_connections']} available; "
                    f"{status['client_connections']} in use (all databases); "
                    f"headroom {status['headroom']}")
        low = status["headroom"] < _LOW_HEADROOM * max(1, status["available_connections"])
        self.stdout.write(self.style.WARNING(headroom) if low else headroom)
        states = status["database_connections"]
        self.stdout.write(
            f"  connections to {entry['target']['database']}: active {states['active']}, "
            f"idle {states['idle']}, idle in transaction {states['idle_in_transaction']}, "
            f"other {states['other']}")
        if status["applications"]:
            rows: list[tuple[str, ...]] = [
                ("APPLICATION_NAME", "ALIAS", "HOST", "PID", "ACTIVE", "IDLE", "IDLE IN TX",
                 "OTHER", "TOTAL")]
            for app in status["applications"]:
                rows.append((app["application_name"] or "(none)", app["alias"] or "-",
                             app["host"] or "-", _text(app["pid"]), str(app["active"]),
                             str(app["idle"]), str(app["idle_in_transaction"]),
                             str(app["other"]), str(app["total"])))
            self._rows(rows)

    def _bouncer(self, bouncer: dict[str, Any]) -> None:
        admin = bouncer["admin"]
        where = f"{admin['user'] + '@' if admin['user'] else ''}{admin['host']}:{admin['port']}"
        if bouncer["error"]:
            self.stdout.write(self.style.ERROR(
                f"  pgbouncer: console {where} unreachable ({bouncer['error']})"))
            return
        config = bouncer["config"]
        self.stdout.write(f"  pgbouncer: {bouncer['version']}, pool_mode "
                          f"{config.get('pool_mode', '-')}, console {where}")
        headroom = bouncer["client_headroom"]
        line = (f"  clients: max_client_conn {_text(config.get('max_client_conn'))}; "
                f"{bouncer['client_connections']} connected (all databases); headroom "
                f"{_text(headroom)}")
        low = headroom is not None and headroom < _LOW_HEADROOM * max(
            1, config.get("max_client_conn") or 1)
        self.stdout.write(self.style.WARNING(line) if low else line)
        self.stdout.write(
            f"  pool of {bouncer['database']}: pool_size {_text(bouncer['pool_size'])}, "
            f"reserve {_text(config.get('reserve_pool_size'))}, max_db_connections "
            f"{_text(bouncer['max_db_connections'])} (0: no limit); server connections "
            + ", ".join(f"{state} {count}" for state, count in bouncer["servers"].items()))
        waiting = (f"  waiting clients: {bouncer['waiting']}, longest "
                   f"{bouncer['longest_wait_s']:.3f} s")
        self.stdout.write(self.style.WARNING(waiting) if bouncer["waiting"] else waiting)
        stats = bouncer["stats"]
        if stats:
            self.stdout.write(
                f"  counters: transactions {_text(stats.get('total_xact_count'))}, queries "
                f"{_text(stats.get('total_query_count'))}, wait "
                f"{(stats.get('total_wait_time') or 0) / 1000:.1f} ms in total")
        if bouncer["clients"]:
            rows: list[tuple[str, ...]] = [
                ("PGBOUNCER CLIENTS", "ALIAS", "HOST", "PID", "ACTIVE", "IDLE", "WAITING",
                 "LONGEST WAIT", "TOTAL")]
            for app in bouncer["clients"]:
                rows.append((app["application_name"] or "(none)", app["alias"] or "-",
                             app["host"] or "-", _text(app["pid"]), str(app["active"]),
                             str(app["idle"]), str(app["waiting"]),
                             f"{app['longest_wait_s']:.3f} s", str(app["total"])))
            self._rows(rows)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
