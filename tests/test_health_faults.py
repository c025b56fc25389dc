"""The health endpoints against a server we may break: stopped, paused with SIGSTOP, full
(``max_connections``), and refusing a password.

The server is a throwaway cluster of its own (``scripts/scratch-cluster``, port 5435), never
the main cluster on 5432, so a failing test cannot leave anyone else's server down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.test import Client, override_settings

from django_poolkit import health

from .helpers.health import poolkit, timed, with_token

pytestmark = pytest.mark.postgres

PORT = 5435
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "scratch-cluster"
DATA = Path(f"/var/lib/postgresql/poolkit-scratch-{PORT}/data")
DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"
#: A bound on a hang, generous so that a loaded 2-core machine cannot fail it (the answers'
#: reasons prove which deadline ended a wait).
HANG_S = 10.0


def cluster(command: str) -> None:
    subprocess.run([str(SCRIPT), command, str(PORT)], check=True, capture_output=True,
                   timeout=60)


def postmaster_pid() -> int:
    return int((DATA / "postmaster.pid").read_text().split()[0])


@pytest.fixture(scope="module")
def scratch(scratch_clusters: set[int]) -> int:
    """The scratch cluster, running; stopped when the test session ends
    (``scratch_clusters``)."""
    scratch_clusters.add(PORT)
    cluster("start")
    return PORT


@pytest.fixture
def scratch_alias(scratch: int, add_alias: Callable[..., str]) -> Iterator[str]:
    """Alias ``scratch`` on the scratch cluster's ``postgres`` database, made the primary of
    the health settings; the cluster is running and not paused again afterwards."""
    add_alias("scratch", HOST="127.0.0.1", PORT=str(scratch), NAME="postgres",
              USER="postgres", PASSWORD="")
    try:
        with override_settings(POOLKIT=poolkit(primary="scratch", databases=["scratch"])):
            yield "scratch"
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.kill(postmaster_pid(), signal.SIGCONT)
        cluster("start")


def wait_for(client: Client, status: int, seconds: float = 10.0) -> None:
    """Poll /health/ready/ until it answers ``status``."""
    deadline = time.monotonic() + seconds
    while client.get("/health/ready/").status_code != status:
        assert time.monotonic() < deadline, f"/health/ready/ never answered {status}"
        time.sleep(0.1)


def test_server_stopped(client: Client, scratch_alias: str) -> None:
    # A cluster just started (or a loaded machine) may miss one 0.3 s probe: healthy first.
    wait_for(client, 200)
    cluster("stop")
    response, took = timed(lambda: with_token(client, "/health/db/"))
    assert response.status_code == 503
    assert response.json()["databases"]["scratch"]["error"] == "connection refused"
    assert took < HANG_S
    cluster("start")
    wait_for(client, 200)


def test_postmaster_stopped_with_sigstop(client: Client, scratch_alias: str) -> None:
    """A paused postmaster accepts TCP connections (the kernel's backlog) and never answers:
    the probe's deadline, not libpq's 2 s minimum, ends the wait."""
    wait_for(client, 200)
    pid = postmaster_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            response, took = timed(lambda: with_token(client, "/health/ready/"))
            assert response.status_code == 503
            assert response.json()["reasons"][0].startswith(
                "scratch: unreachable (no answer within 0.3 s")
            assert took < HANG_S
        # One probe is stuck on the paused server; the rounds above waited on it again
        # instead of opening a connection each.
        started = health.checker.probes_started
        with_token(client, "/health/ready/")
        assert health.checker.probes_started == started
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(client, 200)


def test_a_paused_backend_does_not_hang_the_view(client: Client, scratch_alias: str) -> None:
    """A stopped server *process* hangs only its own connection: the application's query on
    it waits, but the probe opens a fresh connection, so the view answers at once and says
    the server accepts work (which it does)."""
    with psycopg.connect(DSN, autocommit=True) as stuck:
        backend = stuck.info.backend_pid
        os.kill(backend, signal.SIGSTOP)
        try:
            response, took = timed(lambda: client.get("/health/ready/"))
        finally:
            os.kill(backend, signal.SIGCONT)
        assert stuck.execute("SELECT 1").fetchone() == (1,)
    assert response.status_code == 200
    assert took < HANG_S


def test_max_connections_reached(client: Client, scratch_alias: str) -> None:
    """With every slot of ``max_connections`` taken (superuser slots included), new
    connections get 53300 while the open ones work; the probe notices."""
    opened: list[psycopg.Connection[Any]] = []
    try:
        while True:
            try:
                opened.append(psycopg.connect(DSN, autocommit=True, connect_timeout=5))
            except psycopg.OperationalError:
                break
            assert len(opened) < 200
        assert opened[0].execute("SELECT 1").fetchone() == (1,)
        response = with_token(client, "/health/db/")
    finally:
        for connection in opened:
            connection.close()
    assert response.status_code == 503
    assert response.json()["databases"]["scratch"]["error"] == "too many connections"
    wait_for(client, 200)


@pytest.fixture
def password_role(scratch: int) -> Iterator[str]:
    """A role on the scratch cluster that must log in with a SCRAM password (the cluster
    trusts everyone else); pg_hba.conf is restored afterwards."""
    name = f"poolkit_pw_{secrets.token_hex(4)}"
    hba = DATA / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{secrets.token_hex(12)}'")
        hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n{original}")
        admin.execute("SELECT pg_reload_conf()")
        try:
            yield name
        finally:
            hba.write_text(original)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP ROLE {name}")


def test_a_wrong_password_is_reported_without_the_password(
        client: Client, scratch_alias: str, add_alias: Callable[..., str], password_role: str,
        caplog: pytest.LogCaptureFixture) -> None:
    sentinel = f"s3ntinel-PW-{secrets.token_hex(6)}"
    add_alias("locked", HOST="127.0.0.1", PORT=str(PORT), NAME="postgres",
              USER=password_role, PASSWORD=sentinel)
    with override_settings(POOLKIT=poolkit(primary="locked", databases=["locked"]),
                           DEBUG=True), caplog.at_level(logging.DEBUG):
        response = client.get("/health/db/")
    assert response.status_code == 503
    body = response.content.decode()
    assert response.json()["databases"]["locked"]["error"] == "authentication failed"
    for secret in (sentinel, password_role):
        assert secret not in body
    assert sentinel not in caplog.text
