"""A PgBouncer of a test's own: the Debian binary on a free port with its own configuration in
a temporary directory (the shared one of ``scripts/pgbouncer`` is never reconfigured or
restarted by a test). It runs as ``postgres`` when the suite runs as root (PgBouncer refuses
root), serves only the databases it is given, and is stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

#: The settings ``scripts/pgbouncer`` writes, which a test may override.
BASE_SETTINGS: dict[str, Any] = {
    "pool_mode": "transaction",
    "auth_type": "trust",
    "admin_users": "postgres",
    "stats_users": "postgres",
    "max_client_conn": 100,
    "default_pool_size": 20,
    "reserve_pool_size": 0,
    "ignore_startup_parameters": "extra_float_digits,options",
    "server_idle_timeout": 60,
    "log_connections": 0,
    "log_disconnections": 0,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Bouncer:
    """A running PgBouncer of a test: its port, directory and process."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    command: list[str]

    def url(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> list[Any]:
        """Run one admin console command (simple query protocol) and return its rows, over
        its Unix socket (which works from outside a network namespace too)."""
        with psycopg.connect(f"host={self.directory} port={self.port} user=postgres "
                             "dbname=pgbouncer",
                             autocommit=True, connect_timeout=5,
                             cursor_factory=psycopg.ClientCursor) as console:
            cursor = console.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _config(port: int, directory: Path, databases: dict[str, str], settings: dict[str, Any],
            listen_addr: str, server_host: str) -> str:
    lines = ["[databases]"]
    lines += [f"{name} = host={server_host} port=5432 dbname={target}"
              for name, target in databases.items()]
    lines += ["", "[pgbouncer]", f"listen_addr = {listen_addr}", f"listen_port = {port}",
              f"unix_socket_dir = {directory}", f"auth_file = {directory}/userlist.txt",
              f"logfile = {directory}/pgbouncer.log", f"pidfile = {directory}/pgbouncer.pid"]
    lines += [f"{key} = {value}" for key, value in {**BASE_SETTINGS, **settings}.items()]
    return "\n".join(lines) + "\n"


@contextmanager
def own_pgbouncer(databases: dict[str, str], users: tuple[str, ...] = ("postgres",), *,
                  netns: str | None = None, listen_addr: str = "127.0.0.1",
                  server_host: str = "127.0.0.1", **settings: Any) -> Iterator[Bouncer]:
    """Start a PgBouncer serving ``databases`` (name in PgBouncer -> database on the
    primary) for ``users``; ``settings`` override :data:`BASE_SETTINGS`. With ``netns`` it
    runs in that network namespace (reach the primary there through its Unix socket:
    ``server_host="/var/run/postgresql"``)."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="poolkit-bouncer-"))
    as_postgres = os.geteuid() == 0
    try:
        (directory / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in users))
        ini = directory / "pgbouncer.ini"
        ini.write_text(_config(port, directory, databases, settings, listen_addr,
                               server_host))
        if as_postgres:
            owner = pwd.getpwnam("postgres")
            for path in (directory, *directory.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        command = ["pgbouncer", "-q", str(ini)]
        if as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        bouncer = Bouncer(port, directory, _launch(command), command)
        _wait_ready(bouncer)
        try:
            yield bouncer
        finally:
            stop(bouncer)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _launch(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_ready(bouncer: Bouncer) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            bouncer.admin("SHOW VERSION")
            return
        except psycopg.OperationalError:
            if bouncer.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pgbouncer did not start: " + bouncer.log()) from None
            time.sleep(0.05)


def restart(bouncer: Bouncer) -> None:
    """Stop it (SIGTERM: every client connection is cut) and start it again on its port."""
    stop(bouncer)
    bouncer.process = _launch(bouncer.command)
    _wait_ready(bouncer)


def stop(bouncer: Bouncer) -> None:
    """Stop it: SIGTERM to pgbouncer itself (an immediate shutdown), then to its process
    group (runuser, which on a signal of its own waits 2 s before it kills its child);
    SIGKILL after 10 s."""
    if bouncer.process.poll() is not None:
        return
    pidfile = bouncer.directory / "pgbouncer.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        bouncer.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(bouncer.process.pid, signal.SIGKILL)
        bouncer.process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(bouncer.process.pid, signal.SIGKILL)  # anything left in its group
