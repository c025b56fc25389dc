"""The real services the suite relies on, started by the project's own scripts.

The streaming replica (``scripts/replica``), PgBouncer (``scripts/pgbouncer``) and the throwaway
cluster for fault tests (``scripts/scratch-cluster``) are proved real here: a replica in recovery
that replays (and stops replaying when paused), a PgBouncer in transaction mode that lands on the
primary, and a cluster that really restarts. Each test calls the script's ``start`` first, so a
missing service is started or the test *fails* with the script's own reason; nothing is skipped.

Only the database ``poolkit_services`` (created and dropped here) and the scratch cluster on port
``SCRATCH_PORT`` are touched. The replica and PgBouncer are left running.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

pytestmark = pytest.mark.postgres

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
PRIMARY = "host=127.0.0.1 port=5432 user=postgres"
REPLICA_URL = os.environ.get(
    "TEST_REPLICA_URL", "postgres://postgres@127.0.0.1:5433/poolkit")
PGBOUNCER_URL = os.environ.get(
    "TEST_PGBOUNCER_URL", "postgres://postgres@127.0.0.1:6432/poolkit")
DBNAME = "poolkit_services"
SCRATCH_PORT = "5439"  # not 5434, the default other fault tests may use at the same time
WAIT = 20.0  # generous: the machine is shared and noisy; success normally comes in milliseconds


def run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one of the project's scripts; on failure the test fails with the script's output."""
    result = subprocess.run(
        [str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=180, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"scripts/{script} {' '.join(args)} exited {result.returncode}:\n"
                    f"{result.stdout}{result.stderr}")
    return result


def dsn(url: str, dbname: str) -> str:
    """The service's URL pointed at another database."""
    return make_conninfo(url, dbname=dbname)


def eventually(probe: Callable[[], bool], what: str) -> None:
    """Poll until ``probe()`` is true; fail after ``WAIT`` seconds saying what never happened."""
    deadline = time.monotonic() + WAIT
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"after {WAIT:.0f} s: {what}")
        time.sleep(0.05)


def connect(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=10, **kwargs)


@pytest.fixture(scope="module")
def services_db() -> Iterator[str]:
    """``poolkit_services`` created on the primary *after* the replica exists (so it must arrive
    by replication), dropped at the end WITH (FORCE): PgBouncer may hold a server connection."""
    run("replica", "start")
    run("pgbouncer", "start")
    with connect(f"{PRIMARY} dbname=postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DBNAME}")
    with connect(f"{PRIMARY} dbname={DBNAME}") as primary:
        primary.execute("CREATE TABLE probe (id int PRIMARY KEY)")
    try:
        yield DBNAME
    finally:
        run("replica", "resume", check=False)
        with connect(f"{PRIMARY} dbname=postgres") as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")


def replica_rows(replica: psycopg.Connection[Any]) -> set[int]:
    return {row[0] for row in replica.execute("SELECT id FROM probe").fetchall()}


def replica_connection(dbname: str) -> psycopg.Connection[Any]:
    """A connection to ``dbname`` on the replica, once replay has brought the database there."""
    holder: list[psycopg.Connection[Any]] = []

    def attempt() -> bool:
        try:
            holder.append(connect(dsn(REPLICA_URL, dbname)))
        except psycopg.OperationalError:
            return False
        return True

    eventually(attempt, f"database {dbname} never appeared on the replica")
    return holder[0]


def test_replica_is_a_hot_standby_on_its_own_port(services_db: str) -> None:
    with connect(dsn(REPLICA_URL, "postgres")) as replica:
        in_recovery, port = replica.execute(
            "SELECT pg_is_in_recovery(), inet_server_port()").fetchone() or (None, None)
        receiver = replica.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
    assert in_recovery is True
    assert port == int(conninfo_to_dict(REPLICA_URL)["port"] or 0) == 5433
    assert receiver == ("streaming",)
    status = run("replica", "status")
    assert "in recovery: true" in status.stdout
    again = run("replica", "start").stdout.strip().splitlines()
    assert "replica: already running and streaming on 127.0.0.1:5433" in again
    assert run("replica", "url", "x").stdout.strip() == "postgres://postgres@127.0.0.1:5433/x"


def test_replica_replays_and_pause_stops_replay(services_db: str) -> None:
    with connect(f"{PRIMARY} dbname={services_db}") as primary, \
            replica_connection(services_db) as replica:
        primary.execute("INSERT INTO probe VALUES (1)")
        eventually(lambda: 1 in replica_rows(replica), "row 1 from the primary never replayed")

        run("replica", "pause")
        try:
            assert replica.execute("SELECT pg_is_wal_replay_paused()").fetchone() == (True,)
            primary.execute("INSERT INTO probe VALUES (2)")
            written = primary.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert written is not None
            # The WAL with row 2 reaches the replica, which must not apply it while paused.
            eventually(lambda: (replica.execute(
                "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", written).fetchone() == (True,)),
                "the replica never received the WAL of row 2")
            assert replica_rows(replica) == {1}
        finally:
            run("replica", "resume")
        eventually(lambda: replica_rows(replica) == {1, 2}, "row 2 never replayed after resume")


def test_pgbouncer_pools_in_transaction_mode_onto_the_primary(services_db: str) -> None:
    again = run("pgbouncer", "start").stdout.strip()
    assert again == "pgbouncer: already running on 127.0.0.1:6432"
    with connect(dsn(PGBOUNCER_URL, services_db)) as client:
        port, database, recovery = client.execute(
            "SELECT inet_server_port(), current_database(), pg_is_in_recovery()").fetchone() \
            or (None, None, None)
    assert (port, database, recovery) == (5432, services_db, False)

    # The admin console speaks the simple query protocol only: a client-side-binding cursor.
    with connect(dsn(PGBOUNCER_URL, "pgbouncer"), cursor_factory=psycopg.ClientCursor) as console:
        cursor = console.execute("SHOW POOLS")
        columns = [column.name for column in cursor.description or ()]
        pools = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    ours = [pool for pool in pools if pool["database"] == services_db]
    assert ours, pools
    assert {pool["pool_mode"] for pool in ours} == {"transaction"}
    assert "SHOW POOLS:" in run("pgbouncer", "status").stdout


def test_pgbouncer_drops_the_options_startup_parameter(services_db: str) -> None:
    """PgBouncer 1.18 cannot track ``options``; it is configured to ignore it, which means the
    connection succeeds but ``-c statement_timeout=...`` never reaches the server
    (docs/services.rst, "Startup parameters"). This pins that fact for the backend."""
    with connect(dsn(PGBOUNCER_URL, services_db),
                 options="-c statement_timeout=4321 -c TimeZone=Asia/Tokyo") as client:
        timeout, zone = client.execute(
            "SELECT current_setting('statement_timeout'), current_setting('TimeZone')").fetchone() \
            or (None, None)
    assert timeout != "4321ms"
    assert zone != "Asia/Tokyo"
    with connect(f"{PRIMARY} dbname={services_db}",
                 options="-c statement_timeout=4321") as direct:
        assert direct.execute("SHOW statement_timeout").fetchone() == ("4321ms",)


def postmaster_pid(port: str) -> int:
    """The running postmaster's pid, from its ``postmaster.pid`` (first line), checked alive.

    Reading the parent of a backend from ``/proc`` raced with that backend's exit."""
    pid = int(Path(f"/var/lib/postgresql/poolkit-scratch-{port}/data/postmaster.pid")
              .read_text().split()[0])
    os.kill(pid, 0)
    return pid


def test_scratch_cluster_starts_restarts_crashes_and_stops() -> None:
    run("scratch-cluster", "start", SCRATCH_PORT)
    try:
        assert "already running" in run("scratch-cluster", "start", SCRATCH_PORT).stdout
        first = postmaster_pid(SCRATCH_PORT)

        run("scratch-cluster", "restart", SCRATCH_PORT)
        second = postmaster_pid(SCRATCH_PORT)
        assert second != first

        run("scratch-cluster", "kill-postmaster", SCRATCH_PORT)
        assert run("scratch-cluster", "status", SCRATCH_PORT, check=False).returncode == 3
        run("scratch-cluster", "start", SCRATCH_PORT)
        third = postmaster_pid(SCRATCH_PORT)
        assert third not in (first, second)

        run("scratch-cluster", "stop", SCRATCH_PORT)
        assert run("scratch-cluster", "status", SCRATCH_PORT, check=False).returncode == 3
        with pytest.raises(psycopg.OperationalError):
            connect(f"host=127.0.0.1 port={SCRATCH_PORT} user=postgres dbname=postgres")
    finally:
        run("scratch-cluster", "destroy", SCRATCH_PORT)
    assert not Path(f"/var/lib/postgresql/poolkit-scratch-{SCRATCH_PORT}").exists()


HBA_SAMPLE = """# PostgreSQL Client Authentication Configuration File
#
# TYPE  DATABASE        USER            ADDRESS                 METHOD

local   all             postgres                                peer
host    all             all             127.0.0.1/32            scram-sha-256
"""


def marked(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One of scripts/lib.sh's marked-block helpers on a file of the test's own."""
    return subprocess.run(["bash", "-c", f'. "{SCRIPTS}/lib.sh" && "$@"', "marked", *args],
                          capture_output=True, text=True, timeout=30, check=False,
                          cwd=tmp_path)


def test_replica_pg_hba_lines_are_added_once_said_and_removed_exactly(tmp_path: Path) -> None:
    """scripts/replica's edit of the primary's pg_hba.conf, on a copy: its lines go before the
    first rule between its markers, are printed, are not added twice, and ``destroy``'s removal
    gives back the file byte for byte (the real one is shared: it is not touched here)."""
    source = (SCRIPTS / "replica").read_text()
    mark = "# added by django-poolkit scripts/replica"
    assert f'HBA_MARK="{mark}"' in source
    assert 'marked_remove "$hba" "$HBA_MARK"' in source.split("cmd_destroy()")[1]
    hba = tmp_path / "pg_hba.conf"
    hba.write_text(HBA_SAMPLE)
    lines = ["local   replication     all                                     trust",
             "host    replication     all             127.0.0.1/32            trust"]

    added = marked(tmp_path, "marked_insert", str(hba), mark, *lines)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [f"  + {line}" for line in lines]
    rules = [line for line in hba.read_text().splitlines() if line and not line.startswith("#")]
    assert rules[:2] == lines  # before the first rule, so no earlier line shadows them
    assert hba.read_text().count(mark) == 2  # the opening marker and its "(end)"
    assert marked(tmp_path, "marked_insert", str(hba), mark, *lines).returncode == 1
    assert hba.read_text().count(lines[0]) == 1

    assert marked(tmp_path, "marked_remove", str(hba), mark).returncode == 0
    assert hba.read_text() == HBA_SAMPLE
    assert marked(tmp_path, "marked_remove", str(hba), mark).returncode == 1


def test_the_scripts_own_variables_stay_out_of_the_poolkit_prefix() -> None:
    """POOLKIT_* is the strict prefix of the pool settings: a script variable a user exports
    under it would make every manage.py command fail. Scripts read PK_* instead."""
    read = {name for path in SCRIPTS.iterdir() if path.is_file()
            for name in re.findall(r"\$\{?(POOLKIT_\w+|PK_\w+)", path.read_text())}
    assert read >= {"PK_REPLICA_PORT", "PK_PGBOUNCER_PORT"}
    assert sorted(name for name in read if name.startswith("POOLKIT_")) == []
