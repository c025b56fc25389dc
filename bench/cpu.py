"""The CPU cost of one request, counted so that a busy machine cannot move it.

``bench/run --cpu`` (or ``python -m bench cpu``): each configuration runs in its own process
(``python -m bench.cpu worker ...``), which calls Django's WSGI handler in-process: the whole
request path (``request_started``, the URL resolver, the view's primary-key query against the
real database, the response, ``request_finished`` with the connection's return or health
bookkeeping), one thread, no HTTP. Two figures per request:

- **instructions**, counted by ``valgrind --tool=callgrind`` over the measured requests only
  (a tiny helper library started with :mod:`ctypes` toggles callgrind's collection around
  the loop, so start-up and warm-up are not counted). The same code path executes the same
  instructions however busy the machine is: this is the figure of record.
- **CPU microseconds**, ``time.process_time()`` over the measured requests of a run outside
  valgrind (the process's own CPU; other processes' load moves it a little, through caches).

Configurations alternate within each round (the order rotates per round), and each round's
figures are divided by the same round's B: the paired ratios' median and range are reported.
Beside the ratios: the statements each configuration sends per request (counted on the wire
by :class:`~bench.wire.StatementCounter`), a profile of where E's extra time goes compared
with B's (:mod:`cProfile`, per function and per package), the async view under Django's
ASGI handler, and memory: resident memory with 4 aliases and their pools, per idle pooled
connection, and over a long run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import gc
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ASYNC_CONFIGS", "CONFIGS", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent

#: name -> (BENCH_CONFIG, poolkit options for E's variants, description).
CONFIGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "B": ("B", {}, "Django stock backend, CONN_MAX_AGE=60"),
    "H": ("H", {}, "B with CONN_HEALTH_CHECKS=True"),
    "C": ("C", {}, "Django's psycopg pool (OPTIONS['pool']), no check"),
    "D": ("D", {}, "django-db-connection-pool, its defaults (pre-ping)"),
    "E": ("E", {}, "django-poolkit, defaults (pre-ping in socket mode, rollback reset)"),
    "E:no-ping": ("E", {"pool_pre_ping": False}, "E without pre-ping"),
    "E:query-ping": ("E", {"pre_ping_mode": "query"},
                     "E, pre_ping_mode='query' (an empty query at every checkout)"),
    "E:reset_all": ("E", {"reset_on_return": "reset_all"},
                    "E, reset_on_return='reset_all' (one round trip at checkin)"),
    "E:discard_all": ("E", {"reset_on_return": "discard_all"},
                      "E, reset_on_return='discard_all' (one round trip at checkin)"),
    "E:client_timeout": ("E", {"client_timeout": 30},
                         "E, client_timeout=30 (bounded pool round trips)"),
    "E:leak_detection": ("E", {"leak_detection_threshold": 30},
                         "E, leak_detection_threshold=30 (a stack per checkout)"),
}
#: The async view under Django's ASGI handler: name -> (BENCH_CONFIG, path, description).
ASYNC_CONFIGS: dict[str, tuple[str, str, str]] = {
    "B async ORM": ("B", "/apk/", "stock backend (B), the async ORM (aget: sync_to_async)"),
    "E async ORM": ("E", "/apk/", "poolkit backend (E), the async ORM (aget: sync_to_async)"),
    "E async engine": ("E", "/apk-engine/",
                       "poolkit's async engine (get_async_engine(), no thread hop)"),
}
#: The pools whose bare checkout + checkin the benchmark counts.
CHECKOUT_TARGETS = ("sqlalchemy", "poolkit", "psycopg_pool")
#: Functions whose inclusive time the breakdown shows (file fragment, function name).
BREAKDOWN_FUNCTIONS = (
    ("django/db/backends/base/base.py", "connect"),
    ("django_poolkit/db/backends/postgresql/base.py", "connect"),
    ("django_poolkit/db/backends/postgresql/base.py", "get_new_connection"),
    ("django_poolkit/engines/pool.py", "poolkit_orm_connect"),
    ("sqlalchemy/pool/base.py", "_checkout"),
    ("django_poolkit/engines/pool.py", "do_ping"),  # before the engines/ split
    ("django_poolkit/engines/hygiene.py", "do_ping"),
    ("django/db/backends/postgresql/base.py", "init_connection_state"),
    ("django/db/backends/base/base.py", "set_autocommit"),
    ("django/db/backends/base/base.py", "close"),
    ("django_poolkit/db/backends/postgresql/base.py", "_close"),
    ("sqlalchemy/pool/base.py", "_checkin"),
    ("django_poolkit/engines/pool.py", "on_reset"),
    ("django_poolkit/engines/hygiene.py", "on_reset"),
    ("django_poolkit/engines/pool.py", "_do_return_conn"),
    ("django/db/backends/base/base.py", "close_if_unusable_or_obsolete"),
    ("django/db/__init__.py", "close_old_connections"),
    ("django/db/models/query.py", "get"),
    ("django/db/backends/utils.py", "execute"),
    ("django/core/handlers/base.py", "get_response"),
)
#: Package of a profiled function, by the first fragment its file name contains.
PACKAGES = (("django_poolkit", "django-poolkit"), ("sqlalchemy", "SQLAlchemy"),
            ("dj_db_conn_pool", "django-db-connection-pool"), ("psycopg_pool", "psycopg_pool"),
            ("psycopg", "psycopg"), ("django/db", "Django (django.db)"),
            ("django", "Django (other)"), ("", "Python and the rest"))

_HELPER_SOURCE = """
#include <valgrind/callgrind.h>
void bench_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void bench_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def _say(message: str) -> None:
    print(message, flush=True)  # the benchmark talks to its user


# --- The worker: one configuration in its own process --------------------------------------------


def _callgrind_helper() -> Any:
    """The helper library toggling callgrind's collection (built by the parent)."""
    path = os.environ.get("BENCH_CALLGRIND_HELPER")
    if not path:
        raise RuntimeError("BENCH_CALLGRIND_HELPER is not set")
    return ctypes.CDLL(path)


def _wsgi_loop(path: str) -> Callable[[int], None]:
    from bench.inproc import _application, _request

    application = _application(os.environ["BENCH_CONFIG"])

    def loop(n: int) -> None:
        for _ in range(n):
            _request(application, path)

    return loop


def _asgi_loop(path: str) -> Callable[[int], None]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    loop = asyncio.new_event_loop()

    async def one() -> None:
        statuses: list[int] = []
        sent: list[bool] = []

        async def receive() -> dict[str, Any]:
            if not sent:  # the request, then nothing (Django listens for a disconnect)
                sent.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await application(dict(scope), receive, send)
        if statuses != [200]:
            raise RuntimeError(f"{path} answered {statuses}")

    async def many(n: int) -> None:
        for _ in range(n):
            await one()

    def run_n(n: int) -> None:
        loop.run_until_complete(many(n))

    return run_n


def _checkout_loop(target: str) -> Callable[[int], None]:
    """Checkout + checkin of one pool: SQLAlchemy's ``QueuePool`` unchecked (no pre-ping,
    its default rollback reset), poolkit's pool of the ORM's alias with its defaults, or
    psycopg_pool's ``ConnectionPool`` as Django's own pool (C) uses it (no check)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    if target == "psycopg_pool":
        import psycopg_pool

        dsn = os.environ["BENCH_DATABASE_URL"]
        connections = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=1, open=True)

        def get_put(n: int) -> None:
            for _ in range(n):
                connections.putconn(connections.getconn())

        return get_put
    if target == "sqlalchemy":
        import sqlalchemy

        url = os.environ["BENCH_DATABASE_URL"]
        pool = sqlalchemy.create_engine("postgresql+psycopg://" + url.split("://", 1)[1],
                                        pool_size=1, max_overflow=0).pool
    else:
        from django_poolkit import get_engine

        pool = get_engine("default").pool

    def loop(n: int) -> None:
        for _ in range(n):
            pool.connect().close()

    return loop


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then measure ``args.requests`` requests in the way ``args.measure`` says."""
    if args.checkout:
        loop = _checkout_loop(args.checkout)
    else:
        loop = (_asgi_loop if args.asgi else _wsgi_loop)(args.path)
    loop(args.warmup)
    if args.measure == "statements":
        # The parent resets its counting proxy between the warm-up and the measured requests.
        sys.stdout.write("warm\n")
        sys.stdout.flush()
        sys.stdin.readline()
        loop(args.requests)
        return {"requests": args.requests}
    gc.collect()
    if args.measure == "instructions":
        helper = _callgrind_helper()
        helper.bench_start()
        loop(20)  # the first requests after instrumentation starts are not counted either
        helper.bench_toggle()
        loop(args.requests)
        helper.bench_toggle()
        return {"requests": args.requests}
    if args.measure == "profile":
        # CPU time, not wall time: waits for the server are not the configuration's cost.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        loop(args.requests)
        profiler.disable()
        profiler.dump_stats(args.profile_out)
        return {"requests": args.requests}
    if args.measure == "memory":
        return _memory(args, loop)
    started = time.process_time()
    loop(args.requests)
    spent = time.process_time() - started
    return {"requests": args.requests, "us": spent / args.requests * 1e6}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _memory(args: argparse.Namespace, loop: Callable[[int], None]) -> dict[str, Any]:
    """Resident memory: after every alias connected (stock) or its pool filled (poolkit),
    per idle pooled connection, and over a long run of requests."""
    from django.db import connections

    found: dict[str, Any] = {"aliases": len(connections.all())}
    pooled = os.environ["BENCH_CONFIG"] == "E"
    if pooled:
        from django_poolkit import get_engine

        def fill(count: int) -> None:
            for alias in connections:
                pool = get_engine(alias).pool
                held = [pool.connect() for _ in range(count)]
                for fairy in held:
                    fairy.close()

        fill(1)
        gc.collect()
        one = _rss_kib()
        size = int(os.environ.get("BENCH_POOL_SIZE", "4"))
        fill(size)
        gc.collect()
        found["rss_kib"] = _rss_kib()
        extra = len(connections.all()) * (size - 1)
        found["per_idle_connection_kib"] = (found["rss_kib"] - one) / extra
        found["server_connections"] = len(connections.all()) * size
    else:
        for alias in connections:
            connections[alias].ensure_connection()
        gc.collect()
        found["rss_kib"] = _rss_kib()
        found["server_connections"] = len(connections.all())
    if args.long_run:
        samples = []
        step = args.long_run // 10
        for _ in range(10):
            loop(step)
            gc.collect()
            samples.append({"requests": step * (len(samples) + 1), "rss_kib": _rss_kib(),
                            "objects": len(gc.get_objects())})
        found["long_run"] = samples
    return found


# --- The parent: rounds, ratios, profile, memory -------------------------------------------------


def _helper_library(build: Path) -> Path:
    """Compile the callgrind toggle helper (gcc and valgrind's headers)."""
    build.mkdir(parents=True, exist_ok=True)
    source, library = build / "callgrind_helper.c", build / "callgrind_helper.so"
    if library.exists() and source.exists() and source.read_text() == _HELPER_SOURCE:
        return library
    source.write_text(_HELPER_SOURCE)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(library), str(source)],  # noqa: S603,S607
                   check=True)
    return library


def _environment(name: str, database_url: str, extra: dict[str, str] | None = None
                 ) -> dict[str, str]:
    config, options, _ = CONFIGS.get(name) or (ASYNC_CONFIGS[name][0], {}, "")
    return {**os.environ, "BENCH_CONFIG": config, "BENCH_DATABASE_URL": database_url,
            "BENCH_POOLKIT_OPTIONS": json.dumps(options), "PYTHONHASHSEED": "0",
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            **(extra or {})}


def _worker_command(path: str, requests: int, warmup: int, measure: str, *, asgi: bool,
                    extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "bench.cpu", "worker", "--path", path, "--requests",
            str(requests), "--warmup", str(warmup), "--measure", measure,
            *(["--asgi"] if asgi else []), *extra]


def _run_worker(command: list[str], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    done = subprocess.run(command, env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=timeout, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"worker {' '.join(command[3:])} exited {done.returncode}:\n"
                           + done.stderr.strip()[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _instructions(name: str, path: str, asgi: bool, options: argparse.Namespace,
                  helper: Path, build: Path, tag: str) -> float:
    """Instructions per request of one configuration (one callgrind run)."""
    out = build / f"callgrind.{tag}.out"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
               "--dump-line=no", "--compress-strings=no", f"--callgrind-out-file={out}",
               *_worker_command(path, options.callgrind_requests, options.callgrind_warmup,
                                "instructions", asgi=asgi)]
    env = _environment(name, options.database_url, {"BENCH_CALLGRIND_HELPER": str(helper)})
    _run_worker(command, env)
    total = None
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
    out.unlink()
    if total is None:
        raise RuntimeError(f"no instruction total in callgrind's output for {name}")
    return total / options.callgrind_requests


def _checkout(options: argparse.Namespace, helper: Path | None, build: Path
              ) -> dict[str, Any]:
    """Checkout + checkin: poolkit's pool (defaults) against SQLAlchemy's unchecked, and
    psycopg_pool's (what Django's own pool pays for the same)."""
    found: dict[str, Any] = {}
    for target in CHECKOUT_TARGETS:
        command = _worker_command("/", 2000, 200, "instructions" if helper else "process",
                                  asgi=False, extra=("--checkout", target))
        env = _environment("E", options.database_url)
        if helper is None:
            found[target] = _run_worker(command, env)["us"]
            continue
        out = build / f"callgrind.checkout.{target}.out"
        env["BENCH_CALLGRIND_HELPER"] = str(helper)
        _run_worker(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                     "--collect-atstart=no", f"--callgrind-out-file={out}", *command], env)
        totals = [int(line.split()[1]) for line in out.read_text().splitlines()
                  if line.startswith("totals:")]
        found[target] = totals[-1] / 2000
    found["unit"] = "instructions" if helper else "CPU us"
    found["ratio"] = round(found["poolkit"] / found["sqlalchemy"], 3)
    return found


def _process_us(name: str, path: str, asgi: bool, options: argparse.Namespace) -> float:
    result = _run_worker(_worker_command(path, options.requests, options.warmup, "process",
                                         asgi=asgi),
                         _environment(name, options.database_url))
    return float(result["us"])


def _ratio(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 4), "low": round(min(values), 4),
            "high": round(max(values), 4), "n": len(values)}


def _summarise(rows: list[dict[str, Any]], names: list[str], figure: str,
               baseline: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    rounds = sorted({row["round"] for row in rows})
    for name in names:
        mine = [row[figure] for row in rows if row["config"] == name and row.get(figure)]
        if not mine:
            continue
        ratios = []
        for number in rounds:
            by = {row["config"]: row.get(figure) for row in rows if row["round"] == number}
            if by.get(name) and by.get(baseline):
                ratios.append(by[name] / by[baseline])
        summary[name] = {"median": statistics.median(mine), "low": min(mine),
                         "high": max(mine), "ratio": _ratio(ratios) if ratios else None}
    return summary


def _rounds(names: list[str], path_of: Callable[[str], str], asgi: bool,
            options: argparse.Namespace, helper: Path | None, build: Path,
            baseline: str) -> list[dict[str, Any]]:
    """Every configuration once per round, in an order rotated per round; the callgrind
    runs of a round go two at a time (instruction counts do not depend on the load)."""
    rows: list[dict[str, Any]] = []
    for number in range(options.rounds):
        order = names[number % len(names):] + names[:number % len(names)]
        found: dict[str, dict[str, Any]] = {name: {"round": number, "config": name}
                                            for name in order}
        if helper is not None and number < options.callgrind_rounds:
            with ThreadPoolExecutor(max_workers=options.parallel) as pool:
                futures = {name: pool.submit(_instructions, name, path_of(name), asgi,
                                             options, helper, build, f"{number}.{i}")
                           for i, name in enumerate(order)}
                for name, future in futures.items():
                    found[name]["instructions"] = future.result()
        for name in order:
            found[name]["us"] = _process_us(name, path_of(name), asgi, options)
        rows.extend(found[name] for name in names)
        base = found[baseline]
        _say(f"  round {number + 1}/{options.rounds}: " + ", ".join(
            f"{name} {row.get('instructions', 0) / 1000:.0f}k instr "
            f"{row['us']:.0f} us"
            + (f" ({row['instructions'] / base['instructions']:.3f}x)"
               if row.get("instructions") and name != baseline else "")
            for name, row in ((n, found[n]) for n in names)))
    return rows


def _statements(name: str, path: str, asgi: bool, options: argparse.Namespace
                ) -> dict[str, Any]:
    """Statements per request on the wire (a counting proxy between worker and server)."""
    from bench.wire import StatementCounter

    parts = urlsplit(options.database_url)
    proxy = StatementCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))
    n = options.statement_requests
    try:
        with subprocess.Popen(_worker_command(path, n, 100, "statements", asgi=asgi),  # noqa: S603
                              env=_environment(name, url), cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as process:
            if process.stdin is None or process.stdout is None:
                raise RuntimeError("no pipes to the statements worker")
            line = process.stdout.readline()
            if line.strip() != "warm":
                raise RuntimeError(f"statements worker {name}: {line!r} "
                                   + (process.stderr.read() if process.stderr else "")[-2000:])
            proxy.reset()
            process.stdin.write("go\n")
            process.stdin.flush()
            process.wait(timeout=300)
            counts, opened = proxy.counts()
    finally:
        proxy.close()
    return {"requests": n, "statements_per_request": sum(counts.values()) / n,
            "per_request": {kind: count / n for kind, count in sorted(counts.items())},
            "connections_opened": opened}


def _profile(name: str, options: argparse.Namespace, build: Path) -> dict[str, Any]:
    """Where one configuration's time goes per request: :mod:`cProfile` inclusive times of
    the connection-handling functions, and own time per package."""
    out = build / f"profile.{name.replace(':', '_')}.prof"
    _run_worker(_worker_command("/pk/", options.profile_requests, options.warmup, "profile",
                                asgi=False, extra=("--profile-out", str(out))),
                _environment(name, options.database_url))
    stats = pstats.Stats(str(out))
    n = options.profile_requests
    functions: dict[str, float] = {}
    packages: dict[str, float] = {label: 0.0 for _, label in PACKAGES}
    total = 0.0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, tottime, cumtime, _) in raw.items():
        fixed = filename.replace(os.sep, "/")
        total += tottime
        for fragment, label in PACKAGES:
            if fragment in fixed:
                packages[label] += tottime / n * 1e6
                break
        for fragment, wanted in BREAKDOWN_FUNCTIONS:
            if fixed.endswith(fragment) and function == wanted:
                key = f"{fragment.rsplit('/', 1)[-1]}:{function}"
                functions[key] = functions.get(key, 0.0) + cumtime / n * 1e6
    out.unlink()
    return {"requests": n, "total_us": total / n * 1e6,
            "packages_us": {k: round(v, 2) for k, v in packages.items()},
            "functions_us": {k: round(v, 2) for k, v in functions.items()}}


def _memory_figures(options: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for config in ("B", "E"):
        env = _environment(config, options.database_url,
                           {"BENCH_ALIASES": "4", "BENCH_POOL_SIZE": "8"})
        found[config] = _run_worker(_worker_command(
            "/pk/", 0, options.warmup, "memory", asgi=False), env)
    long_run = _run_worker(_worker_command(
        "/pk/", 0, options.warmup, "memory", asgi=False,
        extra=("--long-run", str(options.long_run))), _environment("E", options.database_url))
    samples = long_run["long_run"]
    found["long_run"] = {"config": "E", "requests": options.long_run, "samples": samples,
                         "rss_growth_kib": samples[-1]["rss_kib"] - samples[0]["rss_kib"],
                         "objects_growth": samples[-1]["objects"] - samples[0]["objects"]}
    return found


def ensure_valgrind() -> None:
    """valgrind (and gcc for the helper), from the distribution, when missing."""
    missing = [package for command, package in (("valgrind", "valgrind"), ("gcc", "gcc"))
               if shutil.which(command) is None]
    if not missing:
        return
    _say(f"installing {' '.join(missing)} (apt-get)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:  # noqa: S603
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True,  # noqa: S603
                       check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)  # noqa: S603


def run_memory(options: argparse.Namespace) -> dict[str, Any]:
    """The memory figures alone, written to ``memory.json`` in the results directory (the
    CPU report shows them)."""
    _say(f"memory: 4 aliases, B and E; a long run of {options.long_run} requests (E)")
    memory = _memory_figures(options)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "memory.json").write_text(json.dumps(memory, indent=1) + "\n")
    from bench import cpu_report

    _say("\n".join(cpu_report.memory_lines(memory)))
    return memory


def run(options: argparse.Namespace) -> dict[str, Any]:
    """The whole CPU benchmark; returns (and writes) its results."""
    from bench.harness import machine_facts
    from bench.pg import Server

    started = time.monotonic()
    build = Path(tempfile.mkdtemp(prefix="poolkit-cpu-"))
    helper = None
    if options.callgrind:
        ensure_valgrind()
        helper = _helper_library(build)
    server = Server(options.database_url)
    try:
        server.prepare_database()
        facts = machine_facts(server)
    finally:
        server.close()
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True,  # noqa: S607
                              check=False).stdout.strip() if helper else None
    facts["valgrind"] = valgrind
    _say(f"django-poolkit CPU benchmark {facts['date']}: {facts['nproc']} CPUs, load "
         f"{' '.join(f'{x:.2f}' for x in facts['loadavg_start'])}")
    names = [n for n in CONFIGS if n in options.configs]
    _say(f"sync (WSGI, /pk/): {' '.join(names)} x {options.rounds} rounds")
    rows = _rounds(names, lambda _name: "/pk/", False, options, helper, build, "B")
    async_names = list(ASYNC_CONFIGS) if options.asgi else []
    async_rows: list[dict[str, Any]] = []
    if async_names:
        _say(f"async (ASGI): {', '.join(async_names)} x {options.rounds} rounds")
        async_rows = _rounds(async_names, lambda name: ASYNC_CONFIGS[name][1], True,
                             options, helper, build, "B async ORM")
    _say("checkout + checkin: poolkit's pool against SQLAlchemy's unchecked QueuePool")
    checkout = _checkout(options, helper, build)
    _say(f"  {checkout['poolkit']:.0f} vs {checkout['sqlalchemy']:.0f} {checkout['unit']}: "
         f"{checkout['ratio']:.2f}x")
    _say("statements per request on the wire")
    statements = {name: _statements(name, "/pk/", False, options) for name in names}
    for name in async_names:
        statements[name] = _statements(name, ASYNC_CONFIGS[name][1], True, options)
    _say("  " + ", ".join(f"{k} {v['statements_per_request']:.3f}"
                          for k, v in statements.items()))
    profiles: dict[str, Any] = {}
    if options.profile:
        _say("profile: B and E under cProfile")
        profiles = {name: _profile(name, options, build) for name in ("B", "E")}
    memory_file = options.out / "memory.json"
    memory: dict[str, Any] = (json.loads(memory_file.read_text()) if memory_file.exists()
                              else {})
    shutil.rmtree(build, ignore_errors=True)
    facts["loadavg_end"] = list(os.getloadavg())
    facts["elapsed_s"] = round(time.monotonic() - started, 1)
    # The CPU the run itself used (its workers and valgrind): what it costs on an idle
    # machine, whatever the elapsed time on a busy one.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    facts["cpu_s"] = round(children.ru_utime + children.ru_stime, 1)
    results = {
        "meta": facts,
        "setup": {"rounds": options.rounds, "requests": options.requests,
                  "warmup": options.warmup, "callgrind_requests": options.callgrind_requests,
                  "callgrind_rounds": options.callgrind_rounds,
                  "callgrind": helper is not None,
                  "configs": {name: CONFIGS[name][2] for name in names},
                  "async_configs": {name: ASYNC_CONFIGS[name][2] for name in async_names},
                  "poolkit_options": {name: CONFIGS[name][1] for name in names}},
        "rows": rows, "async_rows": async_rows,
        "instructions": _summarise(rows, names, "instructions", "B") if helper else {},
        "process_us": _summarise(rows, names, "us", "B"),
        "async_instructions": _summarise(async_rows, async_names, "instructions",
                                         "B async ORM") if helper else {},
        "async_process_us": _summarise(async_rows, async_names, "us", "B async ORM"),
        "statements": statements, "profiles": profiles, "memory": memory,
        "checkout": checkout,
    }
    from bench import cpu_report

    results["targets"] = cpu_report.targets(results)
    written = cpu_report.write(results, options.out)
    _say("")
    _say(cpu_report.text(results))
    _say("written: " + ", ".join(str(path) for path in written))
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m bench cpu`` and ``python -m bench.cpu worker`` (one configuration)."""
    parser = argparse.ArgumentParser(prog="bench/run --cpu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    bench = sub.add_parser("cpu", help="the CPU benchmark (the default)")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--requests", type=int, default=2000,
                       help="measured requests per process_time run")
    bench.add_argument("--warmup", type=int, default=200)
    bench.add_argument("--callgrind-rounds", type=int, default=1,
                       help="rounds with a callgrind run (its counts repeat to 0.01 %%)")
    bench.add_argument("--callgrind-requests", type=int, default=100)
    bench.add_argument("--callgrind-warmup", type=int, default=100)
    bench.add_argument("--statement-requests", type=int, default=500)
    bench.add_argument("--profile-requests", type=int, default=2000)
    bench.add_argument("--long-run", type=int, default=100_000,
                       help="requests of the memory long run (0: none)")
    bench.add_argument("--parallel", type=int, default=2,
                       help="callgrind runs at once (counts do not depend on it)")
    bench.add_argument("--configs", default=",".join(CONFIGS))
    bench.add_argument("--no-callgrind", dest="callgrind", action="store_false")
    bench.add_argument("--no-asgi", dest="asgi", action="store_false")
    bench.add_argument("--no-profile", dest="profile", action="store_false")
    bench.add_argument("--memory", action="store_true",
                       help="only the memory figures (about a minute more), written beside "
                            "the CPU results and shown with them")
    bench.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "cpu")
    bench.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/poolkit_bench"))
    one = sub.add_parser("worker", help="one configuration (the benchmark runs it)")
    one.add_argument("--path", default="/pk/")
    one.add_argument("--requests", type=int, required=True)
    one.add_argument("--warmup", type=int, default=300)
    one.add_argument("--measure", choices=("process", "instructions", "statements",
                                           "profile", "memory"), default="process")
    one.add_argument("--asgi", action="store_true")
    one.add_argument("--profile-out")
    one.add_argument("--long-run", type=int, default=0)
    one.add_argument("--checkout", choices=CHECKOUT_TARGETS,
                     help="time checkout+checkin of this pool instead of requests")
    render = sub.add_parser("render", help="render results.json again (with memory.json "
                            "beside it, from bench/run --memory)")
    render.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "cpu")
    args = parser.parse_args(["cpu", *(argv or [])] if not argv or argv[0] not in (
        "cpu", "worker", "render") else argv)
    if args.command == "render":
        from bench import cpu_report

        results = json.loads((args.out / "results.json").read_text())
        memory_file = args.out / "memory.json"
        if memory_file.exists():
            results["memory"] = json.loads(memory_file.read_text())
        cpu_report.write(results, args.out)
        return 0
    if args.command == "worker":
        result = worker(args)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown or "B" not in args.configs:
        parser.error(f"--configs: names among {', '.join(CONFIGS)}, B included "
                     f"(unknown: {', '.join(unknown) or 'none'})")
    if args.memory:
        run_memory(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
