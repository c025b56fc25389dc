"""``manage.py poolplan``, ``POOLKIT["DEPLOYMENT"]`` and the budget checks: the arithmetic
against the real server's ``max_connections``, both formats, and every check id."""

from __future__ import annotations

import io
import json

import django
import pytest
from django.core.checks import Error, Tags, Warning, run_checks
from django.core.management import CommandError, call_command

from django_poolkit import conf
from django_poolkit.checks import check_connection_budget, check_deployment
from django_poolkit.exceptions import ServerUnreachable
from django_poolkit.ops import sizing
from django_poolkit.ops.deployment import Deployment
from django_poolkit.ops.plan import build_plan
from django_poolkit.ops.serverinfo import ServerLimits

pytestmark = pytest.mark.django_db(transaction=True)

SMALL_API = {"default": {"preset": "small_api"}}


def _plan(*args: str) -> tuple[str, int]:
    out = io.StringIO()
    try:
        call_command("poolplan", "--database", "default", *args, stdout=out)
    except CommandError as error:
        return out.getvalue(), error.returncode
    return out.getvalue(), 0


def _json(*args: str) -> dict:
    output, code = _plan("--format", "json", *args)
    assert code == 0, output
    return json.loads(output)


@pytest.fixture
def available(admin) -> int:
    """What the real server accepts from ordinary roles."""
    row = admin.execute(
        "SELECT current_setting('max_connections')::int "
        "- current_setting('superuser_reserved_connections')::int "
        "- COALESCE(current_setting('reserved_connections', true), '0')::int").fetchone()
    return int(row[0])


def test_threaded_pool_size_caps_the_cores_rule_at_the_threads():
    assert sizing.threaded_pool_size(threads=8, cores=2, spindles=0) == (4, 4)
    assert sizing.threaded_pool_size(threads=8, cores=4, spindles=1) == (8, 0)
    assert sizing.threaded_pool_size(threads=1, cores=16, spindles=0) == (1, 0)


def test_pgbouncer_settings_split_the_server_and_admit_every_client():
    bouncer = sizing.pgbouncer_settings(available=97, databases=2, client_connections=640,
                                        cores=8, spindles=0, threads=8)
    assert bouncer == sizing.PgBouncerSettings(
        default_pool_size=16, max_db_connections=97, max_client_conn=640,
        app_pool=sizing.PoolSize(8, 0))
    # A small server: the pool is limited by its share of the slots, not by the cores rule.
    assert sizing.pgbouncer_settings(20, 2, 100, 32, 0, 4).default_pool_size == 10


def test_budget_arithmetic_against_the_real_max_connections(available):
    document = _json("--hosts", "2", "--workers", "4", "--threads", "8", "--cores", "2")
    assert list(document) == ["deployment", "pools", "servers", "skipped", "pgbouncers", "warnings",
                              "fits"]
    assert document["deployment"] == {
        "hosts": 2, "workers": 4, "threads": 8, "processes": 8, "async_concurrency": None,
        "queries_per_request": 1.0, "cores": 2, "spindles": 0, "extra_connections": 0}
    (pool,) = document["pools"]
    assert pool == {
        "alias": "default", "kind": "sync", "server": "127.0.0.1:5432",
        "configured": {"pool_size": 10, "max_overflow": 10, "capacity": 20,
                       "origin": "preset:small_api"},
        "recommended": {"pool_size": 4, "max_overflow": 4, "capacity": 8,
                        "rule": "threads: min(8, 2x2+0) + overflow to 8"}}
    (server,) = document["servers"]
    assert list(server) == [
        "server", "aliases", "max_connections", "reserved_connections",
        "available_connections", "limits_source", "error", "configured_total",
        "configured_fits", "configured_headroom", "recommended_total", "recommended_fits",
        "recommended_headroom", "pgbouncer"]
    assert server["available_connections"] == available
    assert server["limits_source"] == "server"
    # (10 + 10) x 4 workers x 2 hosts, and (4 + 4) x 8.
    assert server["configured_total"] == 160
    assert server["recommended_total"] == 64
    assert server["configured_fits"] is (160 <= available)
    assert server["configured_headroom"] == available - 160
    assert server["recommended_headroom"] == available - 64
    assert document["fits"] is server["configured_fits"]


def test_async_pools_are_counted_with_async_concurrency():
    document = _json("--workers", "2", "--threads", "1", "--async-concurrency", "40",
                     "--queries-per-request", "4", "--max-connections", "100")
    kinds = {pool["kind"]: pool for pool in document["pools"]}
    assert kinds["async"]["configured"]["capacity"] == 20
    # The seed's async formula: ceil(40 / 4) = 10, no overflow.
    assert kinds["async"]["recommended"]["pool_size"] == 10
    assert kinds["async"]["recommended"]["rule"] == "async: ceil(40 / 4)"
    (server,) = document["servers"]
    assert server["configured_total"] == (20 + 20) * 2
    assert server["recommended_total"] == (1 + 10) * 2


def test_a_preset_sizes_the_sync_pools_only():
    """The docs: async pools always use the async formula, --preset or not."""
    document = _json("--workers", "2", "--threads", "1", "--async-concurrency", "40",
                     "--queries-per-request", "4", "--max-connections", "100",
                     "--preset", "high_traffic")
    kinds = {pool["kind"]: pool["recommended"] for pool in document["pools"]}
    assert kinds["sync"]["rule"] == "preset:high_traffic"
    assert kinds["async"] == {"pool_size": 10, "max_overflow": 0, "capacity": 10,
                              "rule": "async: ceil(40 / 4)"}


def test_over_budget_recommends_pgbouncer_in_transaction_mode():
    document = _json("--hosts", "4", "--workers", "8", "--threads", "8", "--cores", "4",
                     "--db-cores", "8", "--extra-connections", "5", "--max-connections", "100",
                     "--reserved-connections", "3")
    (server,) = document["servers"]
    assert server["limits_source"] == "option"
    assert server["recommended_total"] == 8 * 32 + 5
    assert server["recommended_fits"] is False
    assert server["pgbouncer"] == {
        "pool_mode": "transaction", "default_pool_size": 16, "max_db_connections": 92,
        "max_client_conn": 256, "app_pool_size": 8, "app_max_overflow": 0}
    assert document["fits"] is False


def test_table_says_whether_it_fits_and_prints_the_pgbouncer_settings():
    output, code = _plan("--hosts", "4", "--workers", "8", "--threads", "8", "--cores", "4",
                         "--max-connections", "100")
    assert code == 0
    assert "configured: 20 per process x 32 processes = 640: does NOT fit, 543 over" in output
    assert "pool_mode = transaction" in output
    assert "default_pool_size = 8" in output
    assert "max_client_conn = 256" in output
    assert "app side (each process, per alias): pool_size=8, max_overflow=0" in output
    header = next(line for line in output.splitlines() if line.strip().startswith("POOL"))
    row = next(line for line in output.splitlines() if "default (sync)" in line)
    assert row.index("preset:small_api") == header.index("ORIGIN")
    small, _ = _plan("--workers", "2", "--threads", "4", "--cores", "2",
                     "--max-connections", "100")
    assert "configured: 20 per process x 2 processes = 40: fits, headroom 57" in small
    assert "PgBouncer" not in small


def test_deployment_section_gives_the_defaults(settings):
    settings.POOLKIT = {"DATABASES": SMALL_API,
                        "DEPLOYMENT": {"hosts": 3, "workers": 2, "threads": 4, "cores": 2}}
    document = _json("--max-connections", "100", "--workers", "5")
    assert document["deployment"]["hosts"] == 3
    assert document["deployment"]["workers"] == 5  # the option wins
    assert document["servers"][0]["configured_total"] == 20 * 15


def test_unreachable_server_exits_1_unless_planning_offline(settings):
    settings.POOLKIT = {"DATABASES": SMALL_API,
                        "ENGINES": {"down": {"url": "postgresql://u:secret-pw@127.0.0.1:1/x"}}}
    output, code = _plan("--database", "down")
    assert code == 1
    assert "cannot read max_connections (connection refused)" in output
    assert "secret-pw" not in output
    assert _plan("--database", "down", "--max-connections", "50")[1] == 0
    assert _plan("--database", "nope")[1] == 2
    assert _plan("--max-connections", "3", "--reserved-connections", "3")[1] == 2


def test_build_plan_counts_only_postgresql_pools_per_server():
    # "default" is the suite's real alias (127.0.0.1:5432), with sizes of its own here.
    config, problems = conf.build_settings(
        {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 1}},
         "ENGINES": {"other": {"url": "postgresql://u@db2:5433/x", "pool_size": 1,
                               "max_overflow": 0},
                     "local": {"url": "sqlite:///tmp.db"},
                     "bounced": {"url": "postgresql://u@db2:6432/x",
                                 "pgbouncer": "transaction"}}},
        {"default": {"ENGINE": "django.db.backends.postgresql", "HOST": "db1", "PORT": ""}},
        {})
    assert problems == []
    seen = []

    def limits(alias: str) -> ServerLimits:
        seen.append(alias)
        if alias == "other":
            raise ServerUnreachable("connection refused")
        return ServerLimits(20, 3)

    plan = build_plan(Deployment(workers=3, hosts=2, extra_connections=2), config, limits)
    assert seen == ["default", "other"]
    assert plan.skipped == ("local", "bounced")
    first, second = plan.servers
    assert (first.server, first.configured_total, first.fits) == (
        "127.0.0.1:5432", 3 * 6 + 2, False)
    assert (second.server, second.error, second.fits) == ("db2:5433", "connection refused", None)
    assert plan.fits is False


def _problems(deployment: object) -> list[tuple[str, str]]:
    _, problems = conf.build_settings({"DEPLOYMENT": deployment}, {"default": {}}, {})
    return [(problem.check_id, f"{problem.path}: {problem.message}") for problem in problems]


def test_deployment_section_is_validated_with_key_paths():
    assert _problems([1]) == [("poolkit.E040", 'POOLKIT["DEPLOYMENT"]: must be a dict, got list')]
    assert _problems({"worker": 2}) == [
        ("poolkit.E041", 'POOLKIT["DEPLOYMENT"]["worker"]: unknown key; did you mean '
                         '"workers"?')]
    assert _problems({"threads": 0, "queries_per_request": "2"}) == [
        ("poolkit.E042", 'POOLKIT["DEPLOYMENT"]["threads"]: must be an integer >= 1 and <= '
                         "1000000 (request threads per process, e.g. gunicorn --threads), got 0"),
        ("poolkit.E042", 'POOLKIT["DEPLOYMENT"]["queries_per_request"]: must be a number >= '
                         "0.001 and <= 10000 (average queries per request, async formula), "
                         "got '2'")]
    assert _problems({"hosts": 2, "databases": ["default"]}) == []


def test_e043_and_w042_describe_the_deployment_against_the_pools(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 1}},
                        "DEPLOYMENT": {"threads": 8, "databases": ["default", "defualt"]}}
    assert check_deployment() == [
        Error('POOLKIT["DEPLOYMENT"]["databases"] names the unknown pool "defualt"; did you '
              'mean "default"?',
              hint='Pools are the aliases of settings.DATABASES and the names of '
                   'POOLKIT["ENGINES"]: "default", "replica".', id="poolkit.E043"),
        Warning('Pool "default" opens at most 3 connections per process (pool_size 2 + '
                "max_overflow 1), but each process runs 8 request threads.",
                hint="Under full load the other threads wait pool_timeout seconds and fail "
                     "with PoolTimeout: raise pool_size or max_overflow to at least 8, or run "
                     "fewer threads (manage.py poolplan).", id="poolkit.W042"),
    ]
    settings.POOLKIT = {"DATABASES": SMALL_API}
    assert check_deployment() == []


def test_w040_runs_only_with_database_and_uses_the_real_max_connections(
        settings, admin, available):
    max_connections = int(admin.execute("SHOW max_connections").fetchone()[0])
    workers = available // 20 + 1  # (10 + 10) per process: just over the server's slots
    settings.POOLKIT = {"DATABASES": SMALL_API,
                        "DEPLOYMENT": {"workers": workers, "threads": 8, "cores": 2,
                                       "databases": ["default"]}}
    assert check_connection_budget(databases=None) == []
    assert check_connection_budget(databases=["default"]) == [Warning(
        f"The deployment (1 host(s) x {workers} worker(s)) can open up to {workers * 20} "
        f"connections to 127.0.0.1:5432 (default), but the server accepts {available} "
        f"(max_connections {max_connections} minus reserved slots).",
        hint=f"The recommended pools need {workers * 8}: run manage.py poolplan for the "
             "sizes and settings.", id="poolkit.W040")]
    # Registered as a database check: a plain `manage.py check` never reads the server; with
    # --database it does. Asking for the tag alone (`check --tag database`): Django 6.1
    # supplies every alias to the checks ("check now supplies all databases if not
    # specified"), earlier versions none, so W040 runs on 6.1 only.
    assert "poolkit.W040" not in {m.id for m in run_checks()}
    assert "poolkit.W040" in {m.id for m in run_checks(tags=[Tags.database],
                                                       databases=["default"])}
    tag_alone = {m.id for m in run_checks(tags=[Tags.database])}
    assert ("poolkit.W040" in tag_alone) is (django.VERSION >= (6, 1))
    settings.POOLKIT = {"DATABASES": SMALL_API, "DEPLOYMENT": {"workers": 1}}
    assert check_connection_budget(databases=["default"]) == []


def test_w041_when_the_server_cannot_be_read(settings):
    settings.POOLKIT = {"DATABASES": SMALL_API, "DEPLOYMENT": {"workers": 2},
                        "ENGINES": {"down": {"url": "postgresql://u:pw@127.0.0.1:1/x"}}}
    assert check_connection_budget(databases=["down"]) == [Warning(
        "Cannot check the connection budget of 127.0.0.1:1: connection refused.",
        hint="Run the check where the database is reachable, or plan offline with "
             "manage.py poolplan --max-connections N.", id="poolkit.W041")]


@pytest.mark.parametrize(("args", "recommended", "rule"), [
    (("--formula", "cores", "--spindles", "2"), {"pool_size": 6, "max_overflow": 10},
     "cores: 2x2+2, overflow kept"),
    (("--formula", "production",), {"pool_size": 8, "max_overflow": 8},
     "production: 2x2+4, overflow alike"),
    (("--preset", "high_traffic"), {"pool_size": 20, "max_overflow": 30},
     "preset:high_traffic"),
])
def test_the_seeds_formulas_and_presets(args, recommended, rule):
    document = _json("--cores", "2", "--threads", "8", "--max-connections", "100", *args)
    (pool,) = document["pools"]
    assert pool["recommended"] == {**recommended, "rule": rule,
                                   "capacity": sum(recommended.values())}


def test_a_broken_configuration_exits_2(settings):
    settings.POOLKIT = {"DEPLOYMENT": {"workrs": 2}}
    with pytest.raises(CommandError, match='did you mean "workers"') as raised:
        call_command("poolplan", stdout=io.StringIO())
    assert raised.value.returncode == 2


def test_a_pool_smaller_than_the_threads_is_a_warning_with_the_numbers(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 1}}}
    output, code = _plan("--workers", "2", "--threads", "4", "--cores", "2",
                         "--max-connections", "100")
    assert code == 0
    assert ("warning: default (sync) opens at most 3 connection(s) per process (pool_size 2 "
            "+ max_overflow 1) for 4 threads: under load the others wait pool_timeout and "
            "fail with PoolTimeout") in output
    # The same warning in the JSON document, for scripts and deploy checks.
    output, code = _plan("--workers", "2", "--threads", "4", "--cores", "2",
                         "--max-connections", "100", "--format", "json")
    assert code == 0
    assert json.loads(output)["warnings"] == [{
        "alias": "default", "kind": "sync", "check": "pool_smaller_than_threads",
        "message": "default (sync) opens at most 3 connection(s) per process (pool_size 2 "
                   "+ max_overflow 1) for 4 threads: under load the others wait pool_timeout "
                   "and fail with PoolTimeout"}]
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 4, "max_overflow": 0}}}
    output, _ = _plan("--workers", "2", "--threads", "4", "--cores", "2",
                      "--max-connections", "100")
    assert "warning" not in output
    output, _ = _plan("--workers", "2", "--threads", "4", "--cores", "2",
                      "--max-connections", "100", "--format", "json")
    assert json.loads(output)["warnings"] == []
