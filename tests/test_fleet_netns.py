"""A real fleet: three app hosts in network namespaces made here (``ip netns``, veth; only
addresses inside those namespaces), each a gunicorn with poolkit, and one PgBouncer in a
namespace of its own in front of the primary (reached through its Unix socket). From one
host, ``poolstatus`` lists every host's processes through PgBouncer; the fleet's peak server
connections equal what ``poolplan`` predicts; with one host's link down the others fail no
request, and the cut-off host answers again once the link is back. Namespaces and processes
are removed whatever happens. A second test counts the requests that fail when PgBouncer
is told to RECONNECT, RELOAD, or is restarted under load, with poolkit and with Django's own
backend in the same run; a third runs Debian's Prometheus against the three hosts and
compares a fleet query with the server's count. About 25 s, 45 s and 20 s. Marked
``reliability`` with the fault-injection group (a link cut, PgBouncer restarts): it runs on
Django 5.2 and 6.1, not again in every version environment (its faults do not depend on
the versions)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from .helpers.bouncer import free_port, own_pgbouncer, restart

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]

REPO = Path(__file__).resolve().parent.parent
HOSTS = 3
WORKERS = 2
THREADS = 4
POOL_SIZE = 4  # per process, max_overflow 0: one connection per thread
BOUNCER_POOL = 4  # PgBouncer's default_pool_size: the server connections of the fleet

APP = '''
import json, os, socket
from testproject.wsgi import application as django_application
from django.db import close_old_connections, connection


def application(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        from prometheus_client import generate_latest
        from django_poolkit.metrics import registry
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [generate_latest(registry())]
    if environ["PATH_INFO"] == "/hold":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(6)")
        close_old_connections()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"held"]
    if environ["PATH_INFO"] != "/work":
        return django_application(environ, start_response)
    # What Django's request_started and request_finished do around every request: drop a
    # connection that failed or is too old.
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.05)")
    finally:
        close_old_connections()
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP over gunicorn's Unix socket: the test reaches the hosts without a route."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _get(path: str, timeout: float = 5.0, url: str = "/work") -> dict[str, Any] | None:
    """One request; None when it failed (an error status, a timeout, a reset)."""
    connection = _UnixHTTP(path, timeout)
    try:
        connection.request("GET", url)
        reply = connection.getresponse()
        body = reply.read()
    except OSError:
        return None
    finally:
        connection.close()
    if reply.status != 200:
        return None
    return json.loads(body) if url == "/work" else {"body": body.decode()}


@dataclass
class Fleet:
    tag: str
    directory: Path
    bouncer_port: int = 0
    namespaces: list[str] = field(default_factory=list)
    masters: list[subprocess.Popen[str]] = field(default_factory=list)

    def host(self, number: int) -> str:
        return f"{self.tag}h{number}"

    def socket(self, number: int) -> str:
        return str(self.directory / f"h{number}.sock")

    def veth(self, number: int) -> str:
        return f"{self.tag}a{number}"  # the host's end


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


#: Django's own backend, as a production project would run it behind PgBouncer.
STOCK_SETTINGS = """
from testproject.settings import *
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
DATABASES["default"]["CONN_MAX_AGE"] = 60
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
POOLKIT = {}
"""


def _environment(fleet: Fleet, number: int, settings: str = "testproject.settings"
                 ) -> dict[str, str]:
    dbname = connections.settings["default"]["NAME"]
    return {**os.environ, "DJANGO_SETTINGS_MODULE": settings,
            "DATABASE_URL": f"postgres://postgres@10.27.{number}.1:{fleet.bouncer_port}/"
                            + dbname,
            "POOLKIT_DEFAULT__PGBOUNCER": "transaction",
            "POOLKIT_DEFAULT__STATEMENT_TIMEOUT": "none",
            "POOLKIT_DEFAULT__POOL_SIZE": str(POOL_SIZE),
            "POOLKIT_DEFAULT__MAX_OVERFLOW": "0",
            "POOLKIT_DEFAULT__POOL_TIMEOUT": "10",
            "POOLKIT_DEFAULT__CONNECT_TIMEOUT": "3",
            "PROMETHEUS_MULTIPROC_DIR": str(fleet.directory / f"metrics{number}"),
            "PYTHONPATH": f"{fleet.directory}{os.pathsep}{REPO}"}


def _in_host(fleet: Fleet, number: int, command: list[str]) -> list[str]:
    """Run ``command`` on host ``number``: its network namespace and a host name of its
    own (a UTS namespace), so poolkit's application_name tells the hosts apart."""
    name = fleet.host(number)
    return ["ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c",
            f'hostname {name} && exec "$@"', "sh", *command]


@pytest.fixture
def fleet(tmp_path_factory: Any) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("fleet")
    os.chmod(directory, 0o755)  # noqa: S103  gunicorn's workers and PgBouncer read it
    (directory / "fleet_app.py").write_text(APP)
    (directory / "fleet_stock.py").write_text(STOCK_SETTINGS)
    for number in range(1, HOSTS + 1):
        (directory / f"metrics{number}").mkdir()
    made = Fleet(f"pk{os.getpid() % 10000}", directory)
    try:
        yield made
    finally:
        for master in made.masters:
            if master.poll() is None:
                os.killpg(master.pid, signal.SIGKILL)
            master.wait(timeout=30)
        for name in made.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20,
                           check=False)
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                  timeout=20, check=False).stdout
        assert made.tag not in leftover, leftover


def _make_network(fleet: Fleet) -> str:
    """The PgBouncer namespace and one veth pair per host, both ends moved into
    namespaces: 10.27.N.1 on PgBouncer's side, 10.27.N.2 on host N's."""
    hub = f"{fleet.tag}db"
    for name in (hub, *(fleet.host(number) for number in range(1, HOSTS + 1))):
        _ip("netns", "add", name)
        fleet.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
    for number in range(1, HOSTS + 1):
        host, near = fleet.host(number), f"{fleet.tag}b{number}"
        _ip("link", "add", fleet.veth(number), "netns", host, "type", "veth", "peer", "name",
            near, "netns", hub)
        _ip("-n", host, "addr", "add", f"10.27.{number}.2/24", "dev", fleet.veth(number))
        _ip("-n", hub, "addr", "add", f"10.27.{number}.1/24", "dev", near)
        _ip("-n", host, "link", "set", fleet.veth(number), "up")
        _ip("-n", hub, "link", "set", near, "up")
    return hub


def _start_host(fleet: Fleet, number: int, settings: str = "testproject.settings") -> None:
    command = _in_host(fleet, number, [
        sys.executable, "-m", "gunicorn", "-c", "python:django_poolkit.gunicorn",
        "--bind", f"unix:{fleet.socket(number)}", "--bind", f"10.27.{number}.2:8000",
        "--workers", str(WORKERS), "--threads", str(THREADS), "--worker-class", "gthread",
        "--graceful-timeout", "5", "--no-control-socket", "fleet_app:application"])
    # A log file, not a pipe: a pipe nobody reads fills up with the tracebacks of failed
    # requests, and every worker thread then blocks on the logging lock.
    with open(fleet.directory / f"h{number}.log", "a") as log:
        master = subprocess.Popen(command, cwd=fleet.directory,
                                  env=_environment(fleet, number, settings),
                                  stdout=log, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
    fleet.masters.append(master)


def _log(fleet: Fleet, number: int) -> str:
    return (fleet.directory / f"h{number}.log").read_text(errors="replace")[-3000:]


def _wait_serving(fleet: Fleet) -> None:
    deadline = time.monotonic() + 40
    for number in range(1, HOSTS + 1):
        master = fleet.masters[-HOSTS + number - 1]
        while _get(fleet.socket(number)) is None:
            if master.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"host {number} does not serve: " + _log(fleet, number))
            time.sleep(0.2)


def _stop_hosts(fleet: Fleet) -> None:
    """Stop every host (SIGTERM to its process group)."""
    for master in fleet.masters:
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGTERM)
    for master in fleet.masters:
        master.wait(timeout=30)
    fleet.masters.clear()


def _manage(fleet: Fleet, number: int, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        _in_host(fleet, number, [sys.executable, str(REPO / "manage.py"), *args]),
        env=_environment(fleet, number), capture_output=True, text=True, timeout=60,
        check=False)
    start = result.stdout.find("{")
    assert start >= 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout[start:])
    return document


def _server_connections(admin: Any) -> int:
    """Server connections to this test's own database (PgBouncer's, named by their client)."""
    dbname = connections.settings["default"]["NAME"]
    row = admin.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = %s AND "
                        "backend_type = 'client backend' AND pid <> pg_backend_pid()",
                        (dbname,)).fetchone()
    return int(row.n)


def _load(fleet: Fleet, hosts: list[int], seconds: float,
          failures: list[float] | None = None) -> dict[int, list[bool]]:
    """THREADS x WORKERS concurrent requests per host for ``seconds``: which succeeded;
    ``failures`` gets the time (``time.monotonic()``) each failed request ended."""
    results: dict[int, list[bool]] = {number: [] for number in hosts}
    stop = time.monotonic() + seconds

    def run(number: int) -> None:
        while time.monotonic() < stop:
            ok = _get(fleet.socket(number)) is not None
            results[number].append(ok)
            if not ok and failures is not None:
                failures.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=len(hosts) * THREADS * WORKERS) as pool:
        for future in [pool.submit(run, number) for number in hosts
                       for _ in range(THREADS * WORKERS)]:
            future.result()
    return results


def test_three_hosts_behind_one_pgbouncer(fleet: Fleet, admin: Any) -> None:
    dbname = connections.settings["default"]["NAME"]
    hub = _make_network(fleet)
    with own_pgbouncer({dbname: dbname}, netns=hub, listen_addr="*",
                       server_host="/var/run/postgresql", default_pool_size=BOUNCER_POOL,
                       max_client_conn=200, query_wait_timeout=20) as bouncer:
        fleet.bouncer_port = bouncer.port
        for number in range(1, HOSTS + 1):
            _start_host(fleet, number)
        _wait_serving(fleet)

        # The budget predicted from host 1, against the running PgBouncer.
        plan = _manage(fleet, 1, "poolplan", "--format", "json", "--hosts", str(HOSTS),
                       "--workers", str(WORKERS), "--threads", str(THREADS))
        [behind] = plan["pgbouncers"]
        assert behind["clients"] == HOSTS * WORKERS * POOL_SIZE
        predicted = behind["server_connections"]
        assert predicted == BOUNCER_POOL

        # Load on every host; meanwhile the peak of server connections and host 1's view.
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _server_connections(admin))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        status: dict[str, Any] = {}

        def look() -> None:
            time.sleep(2)
            status.update(_manage(fleet, 1, "poolstatus", "--format", "json"))

        looker = threading.Thread(target=look)
        looker.start()
        results = _load(fleet, list(range(1, HOSTS + 1)), 5)
        looker.join(timeout=60)
        done.set()
        watcher.join(timeout=10)
        assert all(all(ok) for ok in results.values()), {
            number: ok.count(False) for number, ok in results.items()}
        assert peak == predicted, (peak, predicted)

        view = status["databases"][0]["pgbouncer"]
        assert view["error"] is None, view
        seen = {(row["host"], row["pid"]) for row in view["clients"] if row["alias"]}
        hosts_seen = {host for host, _ in seen}
        assert hosts_seen == {fleet.host(number) for number in range(1, HOSTS + 1)}, seen
        assert len(seen) == HOSTS * WORKERS

        # Host 3 cut off: hosts 1 and 2 fail nothing; host 3 answers again after.
        _ip("-n", fleet.host(3), "link", "set", fleet.veth(3), "down")
        cut = _load(fleet, [1, 2, 3], 4)
        _ip("-n", fleet.host(3), "link", "set", fleet.veth(3), "up")
        assert all(cut[1]), cut[1].count(False)
        assert all(cut[2]), cut[2].count(False)
        recovered = False
        deadline = time.monotonic() + 20
        while not recovered and time.monotonic() < deadline:
            recovered = _get(fleet.socket(3), timeout=10) is not None
        assert recovered
        print(f"\nfleet: predicted server connections {predicted}, peak {peak}; "
              f"requests {sum(len(ok) for ok in results.values())} failed 0; "
              f"link down on host 3: hosts 1-2 {len(cut[1]) + len(cut[2])} ok, host 3 "
              f"{cut[3].count(False)} of {len(cut[3])} failed")
        _stop_hosts(fleet)
        bouncer.admin(f"RECONNECT {dbname}")


#: Faults on the running PgBouncer, each one second into a 3 s load on every host.
FAULTS = {
    "RECONNECT": lambda bouncer, dbname: bouncer.admin(f"RECONNECT {dbname}"),
    "RELOAD": lambda bouncer, dbname: bouncer.admin("RELOAD"),
    "restart": lambda bouncer, dbname: restart(bouncer),
}


def test_pgbouncer_reconnect_reload_and_restart_under_load_beside_the_stock_backend(
        fleet: Fleet, admin: Any) -> None:
    dbname = connections.settings["default"]["NAME"]
    hub = _make_network(fleet)
    failed: dict[str, dict[str, tuple[int, int]]] = {}
    outage: dict[str, dict[str, float]] = {"poolkit": {}, "stock": {}}
    with own_pgbouncer({dbname: dbname}, netns=hub, listen_addr="*",
                       server_host="/var/run/postgresql", default_pool_size=BOUNCER_POOL,
                       max_client_conn=200, query_wait_timeout=20) as bouncer:
        fleet.bouncer_port = bouncer.port
        for backend, settings in (("poolkit", "testproject.settings"),
                                  ("stock", "fleet_stock")):
            for number in range(1, HOSTS + 1):
                _start_host(fleet, number, settings)
            _wait_serving(fleet)
            failed[backend] = {}
            for fault, act in FAULTS.items():
                timer = threading.Timer(1.0, act, (bouncer, dbname))
                timer.start()
                ends: list[float] = []
                results = _load(fleet, list(range(1, HOSTS + 1)), 3, ends)
                timer.join(timeout=30)
                outcomes = [ok for oks in results.values() for ok in oks]
                failed[backend][fault] = (outcomes.count(False), len(outcomes))
                # How long requests failed: from the first failure to the last.
                outage[backend][fault] = round(max(ends) - min(ends), 2) if ends else 0.0
            # And once it is over: every pool serves again.
            results = _load(fleet, list(range(1, HOSTS + 1)), 2)
            outcomes = [ok for oks in results.values() for ok in oks]
            failed[backend]["after"] = (outcomes.count(False), len(outcomes))
            _stop_hosts(fleet)
        bouncer.admin(f"RECONNECT {dbname}")
    print("\nfleet faults (failed, requests): " + json.dumps(failed)
          + "; seconds from the first failure to the last: " + json.dumps(outage))
    # RECONNECT and RELOAD close nothing a client holds: neither backend fails a request.
    for backend in ("poolkit", "stock"):
        assert failed[backend]["RECONNECT"][0] == 0, failed
        assert failed[backend]["RELOAD"][0] == 0, failed
    # A restart cuts every client connection and refuses new ones until PgBouncer listens
    # again: requests fail with either backend while it is down (the load retries at once,
    # so the count is the load's rate, the outage is the figure), and none once it is back.
    for backend in ("poolkit", "stock"):
        assert failed[backend]["restart"][0] > 0, failed
        assert failed[backend]["after"][0] == 0, failed
        assert outage[backend]["restart"] < 5, outage


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: app
    metrics_path: /metrics
    static_configs:
      - targets: [{targets}]
"""


def _prometheus_query(fleet: Fleet, hub: str, port: int, query: str) -> list[Any]:
    """An instant query to the Prometheus in the PgBouncer namespace (reached from there)."""
    import urllib.parse

    result = subprocess.run(
        ["ip", "netns", "exec", hub, "curl", "-s", "--max-time", "5",
         f"http://10.27.1.1:{port}/api/v1/query?query=" + urllib.parse.quote(query)],
        capture_output=True, text=True, timeout=20, check=False)
    if result.returncode != 0:
        return []
    answer = json.loads(result.stdout)
    found: list[Any] = answer.get("data", {}).get("result", [])
    return found


def test_prometheus_fleet_sum_equals_the_servers_count(fleet: Fleet, admin: Any) -> None:
    """Debian's Prometheus scrapes the three hosts (every worker summed through
    ``PROMETHEUS_MULTIPROC_DIR``); with one request per host holding its connection in a
    transaction, the fleet query ``sum(poolkit_pool_checked_out)`` equals the server's
    count of active connections to the test database at the same time."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: run scripts/ensure-prometheus")
    dbname = connections.settings["default"]["NAME"]
    hub = _make_network(fleet)
    with own_pgbouncer({dbname: dbname}, netns=hub, listen_addr="*",
                       server_host="/var/run/postgresql", default_pool_size=BOUNCER_POOL,
                       max_client_conn=200) as bouncer:
        fleet.bouncer_port = bouncer.port
        for number in range(1, HOSTS + 1):
            _start_host(fleet, number)
        _wait_serving(fleet)
        port = free_port()
        targets = ", ".join(f'"10.27.{number}.2:8000"' for number in range(1, HOSTS + 1))
        (fleet.directory / "prometheus.yml").write_text(
            PROMETHEUS_CONFIG.format(targets=targets))
        prometheus = subprocess.Popen(
            ["ip", "netns", "exec", hub, "prometheus",
             f"--config.file={fleet.directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={fleet.directory / 'tsdb'}",
             f"--web.listen-address=10.27.1.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while len(_prometheus_query(fleet, hub, port, 'up{job="app"} == 1')) < HOSTS:
                assert time.monotonic() < deadline, "Prometheus does not scrape the hosts"
                time.sleep(0.5)
            holders = [threading.Thread(target=_get, args=(fleet.socket(number), 15, "/hold"))
                       for number in range(1, HOSTS + 1)]
            for holder in holders:
                holder.start()
            time.sleep(3)  # the holds run 6 s; Prometheus scrapes every second
            fleet_sum = _prometheus_query(
                fleet, hub, port, 'sum(poolkit_pool_checked_out{alias="default"})')
            server = admin.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = %s AND "
                "state = 'active' AND pid <> pg_backend_pid()", (dbname,)).fetchone().n
            per_host = _prometheus_query(
                fleet, hub, port, 'sum by (instance) (poolkit_pool_checked_out)')
            for holder in holders:
                holder.join(timeout=20)
        finally:
            os.killpg(prometheus.pid, signal.SIGTERM)
            prometheus.wait(timeout=30)
        _stop_hosts(fleet)
        bouncer.admin(f"RECONNECT {dbname}")
    assert float(fleet_sum[0]["value"][1]) == server == HOSTS, (fleet_sum, server)
    assert sorted(float(row["value"][1]) for row in per_host) == [1.0] * HOSTS, per_host
    print(f"\nprometheus: sum(poolkit_pool_checked_out) {fleet_sum[0]['value'][1]}, "
          f"server's active connections {server}")
