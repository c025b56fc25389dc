"""Reading other poolers' consoles: ``ops.bouncer.snapshot_of`` over rows shaped like
pgcat's and PgDog's answers (column names from their sources: pgcat ``src/admin.rs``, PgDog
``pgdog/src/admin/show_*.rs``; neither runs here), and PgBouncer 1.18's own shape."""

from __future__ import annotations

from django_poolkit.ops.bouncer import snapshot_of

NAME = "poolkit:default:web1:4242"


def test_pgbouncer_118_rows():
    snapshot = snapshot_of({
        "SHOW VERSION": [{"version": "PgBouncer 1.18.0"}],
        "SHOW CONFIG": [{"key": "max_client_conn", "value": "1000", "default": "100",
                         "changeable": "yes"},
                        {"key": "pool_mode", "value": "transaction", "default": "session",
                         "changeable": "yes"}],
        "SHOW DATABASES": [{"name": "app", "pool_size": 20, "max_connections": 0}],
        "SHOW POOLS": [{"database": "app", "user": "u", "cl_active": 2, "cl_waiting": 1,
                        "sv_active": 1, "sv_idle": 0, "maxwait": 2, "maxwait_us": 500000,
                        "pool_mode": "transaction"}],
        "SHOW CLIENTS": [
            {"database": "app", "state": "active", "link": "0x1", "application_name": NAME},
            {"database": "app", "state": "active", "link": "", "application_name": NAME},
            {"database": "app", "state": "waiting", "link": "", "wait": 2, "wait_us": 500000,
             "application_name": NAME},
            {"database": "pgbouncer", "state": "active", "link": "", "application_name": ""}],
        "SHOW SERVERS": [{"database": "app", "state": "active"}],
        "SHOW STATS": [{"database": "app", "total_xact_count": 7}],
    }, "app")
    [clients] = snapshot.clients
    assert (clients.active, clients.idle, clients.waiting, clients.longest_wait_s) == (
        1, 1, 1, 2.5)
    assert (clients.alias, clients.host, clients.pid) == ("default", "web1", 4242)
    assert snapshot.waiting == 1
    assert snapshot.longest_wait_s == 2.5
    assert snapshot.config == {"max_client_conn": 1000, "pool_mode": "transaction"}
    assert snapshot.client_connections == 3  # the console's own connection left out
    assert snapshot.client_headroom == 997
    assert snapshot.stats == {"total_xact_count": 7}


def test_pgcat_rows_no_link_column_and_database_name_in_servers():
    snapshot = snapshot_of({
        "SHOW VERSION": [{"version": "PgCat 1.2.0"}],
        "SHOW CONFIG": [{"key": "pool_mode", "value": "transaction", "default": "-",
                         "changeable": "yes"}],
        "SHOW POOLS": [{"database": "app", "user": "u", "cl_waiting": 1, "sv_active": 2,
                        "maxwait": 0, "maxwait_us": 250000, "pool_mode": "transaction"}],
        "SHOW CLIENTS": [
            {"client_id": "0x01", "database": "app", "user": "u", "application_name": NAME,
             "state": "active", "maxwait": 0, "maxwait_us": 0},
            {"client_id": "0x02", "database": "app", "user": "u", "application_name": NAME,
             "state": "idle", "maxwait": 0, "maxwait_us": 0},
            {"client_id": "0x03", "database": "app", "user": "u", "application_name": NAME,
             "state": "waiting", "maxwait": 0, "maxwait_us": 250000}],
        "SHOW SERVERS": [{"server_id": "0x09", "database_name": "app", "state": "active"}],
        "SHOW STATS": [{"instance": "app_shard_0_primary", "database": "app", "user": "u",
                        "total_query_count": 3}],
    }, "app")
    [clients] = snapshot.clients
    assert (clients.active, clients.idle, clients.waiting, clients.longest_wait_s) == (
        1, 1, 1, 0.25)
    assert snapshot.servers["active"] == 1
    assert snapshot.stats == {"total_query_count": 3}  # text columns dropped
    assert snapshot.pool_size is None  # its SHOW DATABASES names addresses, not databases


def test_pgdog_rows_without_show_databases():
    snapshot = snapshot_of({
        "SHOW VERSION": [{"version": "PgDog 0.1"}],
        "SHOW POOLS": [{"id": 1, "database": "app", "user": "u", "shard": 0, "role": "primary",
                        "cl_waiting": 2, "sv_idle": 1, "sv_active": 3, "maxwait": 1,
                        "maxwait_us": 0, "pool_mode": "transaction"}],
        "SHOW CLIENTS": [
            {"id": 1, "user": "u", "database": "app", "state": "active",
             "application_name": NAME, "wait_time": 0},
            {"id": 2, "user": "u", "database": "app", "state": "waiting",
             "application_name": NAME, "wait_time": 1500.0}],
    }, "app", ("SHOW DATABASES",))
    [clients] = snapshot.clients
    assert (clients.active, clients.waiting, clients.longest_wait_s) == (1, 1, 1.5)
    assert snapshot.waiting == 2
    assert snapshot.as_dict()["unsupported"] == ["SHOW DATABASES"]


def test_a_budget_behind_a_pooler_without_pgbouncers_limits_guesses_none():
    from django_poolkit import conf
    from django_poolkit.ops.deployment import Deployment
    from django_poolkit.ops.plan import build_plan
    from django_poolkit.ops.serverinfo import ServerLimits

    config, problems = conf.build_settings(
        {"ENGINES": {"bounced": {"url": "postgresql://u@pgcat:6432/app",
                                 "pgbouncer": "transaction", "pool_size": 4,
                                 "max_overflow": 0}}}, {}, {})
    assert problems == []
    snapshot = snapshot_of({"SHOW VERSION": [{"version": "PgCat 1.2.0"}],
                            "SHOW CONFIG": [{"key": "pool_mode", "value": "transaction"}]},
                           "app")
    plan = build_plan(Deployment(hosts=2, workers=3), config,
                      lambda alias: ServerLimits(100, 3), bouncer=lambda alias: snapshot)
    [behind] = plan.bouncers
    assert behind.clients == 24
    assert behind.limits == ()  # no max_client_conn, no pool size: nothing to compare
    assert behind.server_connections is None
    assert behind.fits is None  # unknown, not a guess
