"""The benchmark run: load rounds, server work per request, micro-benchmarks and scaling.

``python -m bench [--quick]`` (``bench/run`` installs what it needs first). The order of a run:

1. **Work**: per configuration, the statements the server executes per request, counted by
   a proxy on the wire (exact, and free of the machine's drift), and ``pg_stat_database``'s
   transactions and sessions over the server's life.
2. **Load**, for several rounds: configurations A B H C D E F in turn, each on a new gunicorn
   server; per view, a short warm-up then ``wrk`` at 32 connections while a sampler counts
   the configuration's server connections.
3. **In-process**: ``python -m bench.inproc`` per configuration per round (one request
   through the WSGI application, one thread, no HTTP).
4. **Micro**: ``python -m bench.micro`` in its own process (in-process checkout costs).
5. **Scaling**: B, E and A at 1 to 256 client connections, taking turns at each point.

A configuration whose server cannot start is reported as failed, with the reason from its
error log, and the others still run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import report
from .pg import ConnectionSampler, Server, describe
from .server import ROOT, THREADS, WORKERS, BenchServer, ServerFailed, exact_requests
from .wire import StatementCounter
from .wrk import run_wrk

__all__ = ["Options", "main", "run"]

CONFIGS = ("A", "B", "H", "C", "D", "E", "F")
#: The work phase's concurrent warm-up clients per view (3 per server thread).
WORK_WARMUP_CLIENTS = 3 * WORKERS * THREADS
VIEWS = {"pk": "/pk/", "three": "/three/"}
#: How each configuration names its server connections (``application_name``), so the
#: sampler counts one configuration's connections while other servers stay up.
APPLICATION_NAMES = {"A": "bench-A", "B": "bench-B", "H": "bench-H", "C": "bench-C", "D": "bench-D",
                     "E": "poolkit:%", "F": "bench-F"}
DESCRIPTIONS = {
    "A": "Django stock backend, CONN_MAX_AGE=0 (a new connection per request)",
    "B": "Django stock backend, CONN_MAX_AGE=60 (one persistent connection per thread)",
    "H": "Django stock backend, CONN_MAX_AGE=60 and CONN_HEALTH_CHECKS=True",
    "C": "Django's psycopg pool (OPTIONS['pool']), min=max=pool size, no check",
    "D": "django-db-connection-pool (dj_db_conn_pool.backends.postgresql), its defaults",
    "E": "django-poolkit (django_poolkit.db.backends.postgresql), its defaults",
    "F": "plain WSGI app, no Django, one psycopg connection per thread (the ceiling)",
}


@dataclass
class Options:
    """What one run does (the command line, or a test's choice)."""

    quick: bool = False
    rounds: int = 9
    duration_s: float = 5.0
    warmup_requests: int = 200
    connections: int = 32
    pool_size: int = 4
    work_requests: int = 1000
    work_warmup: int = 480
    scaling_configs: tuple[str, ...] = ("B", "E", "A")
    scaling_points: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    scaling_duration_s: float = 5.0
    scaling_passes: int = 2
    inproc_rounds: int = 4
    inproc_budget_s: float = 0.4
    micro: bool = True
    configs: tuple[str, ...] = CONFIGS
    out_dir: Path = field(default_factory=lambda: ROOT / "docs" / "bench")
    database_url: str = "postgres://postgres@127.0.0.1:5432/poolkit_bench"

    @classmethod
    def quick_mode(cls, **changes: Any) -> Options:
        """Fewer rounds, points and requests: the whole run in under three minutes."""
        values: dict[str, Any] = {
            "quick": True, "rounds": 2, "duration_s": 2.0, "warmup_requests": 100,
            "work_requests": 200, "scaling_points": (1, 32, 256), "scaling_duration_s": 2.0,
            "scaling_passes": 1,
            "inproc_rounds": 2, "inproc_budget_s": 0.1, "work_warmup": 240,
            "out_dir": ROOT / "bench" / ".results" / "quick"}
        values.update(changes)
        return cls(**values)


def _say(message: str) -> None:
    print(message, flush=True)  # the harness talks to its user


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,  # noqa: S603,S607
                          check=False)
    return done.stdout.strip()


def machine_facts(server: Server) -> dict[str, Any]:
    """Date, versions and machine, for the results' header."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)  # noqa: S607
        lines = (wrk.stdout or wrk.stderr).strip().splitlines()
    except OSError:  # the CPU benchmark runs without wrk
        lines = []
    wrk_version = lines[0].split(" Copyright")[0] if lines else "?"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "loadavg_start": list(os.getloadavg()),
        "other_server_connections_start": server.other_connections(),
        "python": platform.python_version(),
        "postgresql": server.version(),
        "commit": _git("rev-parse", "--short", "HEAD") or "?",
        # The package as measured, committed or not (the tree may carry uncommitted work).
        "django_poolkit_sha256": hashlib.sha256(b"".join(
            path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes()
            for path in sorted((ROOT / "django_poolkit").rglob("*.py")))).hexdigest()[:16],
        "tree_dirty": bool(_git("status", "--porcelain")),
        "wrk": wrk_version,
        "versions": {name: _version(name) for name in (
            "django-poolkit", "Django", "SQLAlchemy", "psycopg", "psycopg-pool",
            "django-db-connection-pool", "gunicorn")},
    }


def _via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


def measure_work(options: Options, server: Server, config: str, log_dir: Path) -> dict[str, Any]:
    """What the server executes per request, for one configuration.

    One server, through :class:`~bench.wire.StatementCounter`: per view, a warm-up (so the
    connections are open and hot), then exactly ``work_requests`` requests, 8 at a time,
    whose statements are counted by kind. ``pg_stat_database`` is read with no bench
    connection open before the server starts and after it stopped (its backends report when
    they exit), which gives the transactions and sessions of the server's whole life,
    connection setup included.
    """
    parts = urlsplit(options.database_url)
    proxy = StatementCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    found: dict[str, Any] = {}
    total = 2  # the readiness check: one request per view
    try:
        server.wait_for_no_connections()
        before = server.settled_transactions(quiet_s=0.2)
        bench = BenchServer(config, _via(options.database_url, proxy.port), options.pool_size,
                            log_dir)
        with bench:
            for view, path in VIEWS.items():
                # Enough concurrent clients that every server thread runs (gthread starts
                # threads on demand) and opens whatever it keeps: the count is of hot work.
                exact_requests(bench.port, path, options.work_warmup,
                               concurrency=WORK_WARMUP_CLIENTS)
                proxy.reset()
                ok = exact_requests(bench.port, path, options.work_requests)
                if ok != options.work_requests:
                    raise RuntimeError(f"{config} {path}: {options.work_requests - ok} of "
                                       f"{options.work_requests} requests failed:\n"
                                       + bench.tail())
                counts, opened = proxy.counts()
                on_new = proxy.new_connection_counts()
                n = options.work_requests
                total += options.work_warmup + n
                found[view] = {
                    "requests": n, "ok": ok, "statements": counts,
                    "statements_per_request": sum(counts.values()) / n,
                    "per_request": {kind: count / n for kind, count in sorted(counts.items())},
                    "connections_opened_per_request": opened / n,
                    "statements_on_new_connections": on_new,
                    "texts": proxy.texts(),
                }
        server.wait_for_no_connections()
        after = server.settled_transactions(quiet_s=0.2)
    finally:
        proxy.close()
    delta = {key: after[key] - before[key] for key in after}
    found["server_life"] = {
        "requests": total, **delta,
        "transactions_per_request": (delta["commit"] + delta["rollback"]) / total,
        "sessions_per_request": delta["sessions"] / total,
    }
    return found


def run_work(options: Options, server: Server, log_dir: Path,
             failures: dict[str, str]) -> dict[str, Any]:
    """:func:`measure_work` for every configuration (it does not drift: once is enough)."""
    work: dict[str, Any] = {}
    for config in options.configs:
        try:
            work[config] = measure_work(options, server, config, log_dir)
        except (ServerFailed, RuntimeError, OSError, ValueError) as error:
            failures[config] = str(error) if isinstance(error, ServerFailed) else describe(error)
            _say(f"  work {config} FAILED, left out of the run:\n" + _indent(failures[config]))
            continue
        _say(f"  work {config}: " + ", ".join(
            f"{view} {work[config][view]['statements_per_request']:.3f} statements/request "
            f"{work[config][view]['per_request']}" for view in VIEWS)
            + f"; server life {work[config]['server_life']['transactions_per_request']:.3f} "
            "transactions/request")
    return work


def _load_one(options: Options, server: Server, bench: BenchServer, view: str,
              path: str, connections: int, duration_s: float) -> dict[str, Any]:
    exact_requests(bench.port, path, options.warmup_requests, concurrency=min(16, connections))
    with ConnectionSampler(server.url, APPLICATION_NAMES[bench.config]) as sampler:
        result = run_wrk(bench.url + path, connections, duration_s)
    return {**result.as_dict(), "view": view, "connections": connections,
            "peak_server_connections": sampler.peak, "sampler_error": sampler.error,
            "loadavg_1min_after": os.getloadavg()[0]}


def run_load(options: Options, server: Server, log_dir: Path,
             failures: dict[str, str]) -> list[dict[str, Any]]:
    """The alternating rounds; a configuration that fails is left out of later rounds."""
    rows: list[dict[str, Any]] = []
    for number in range(options.rounds):
        for config in options.configs:
            if config in failures:
                continue
            started = time.monotonic()
            bench = BenchServer(config, options.database_url, options.pool_size, log_dir)
            try:
                with bench:
                    for view, path in VIEWS.items():
                        row = _load_one(options, server, bench, view, path,
                                        options.connections, options.duration_s)
                        rows.append({"round": number, "config": config, **row})
            except (ServerFailed, RuntimeError, OSError, ValueError) as error:
                failures[config] = describe(error) if not isinstance(error, ServerFailed) \
                    else str(error)
                _say(f"  round {number + 1}: {config} FAILED, left out of the run:\n"
                     + _indent(failures[config]))
                continue
            finally:
                server.wait_for_no_connections()
            done = [r for r in rows if r["round"] == number and r["config"] == config]
            _say(f"  round {number + 1}/{options.rounds} {config}: " + ", ".join(
                f"{r['view']} {r['rps']:.0f} req/s p99 {r['p99_ms']:.1f} ms "
                f"conns {r['peak_server_connections']}" for r in done)
                + f" ({time.monotonic() - started:.0f} s)")
    return rows


def run_scaling(options: Options, server: Server, log_dir: Path,
                failures: dict[str, str]) -> dict[str, Any]:
    """Req/s, latency and server connections of the scaling configurations as the number
    of client connections grows (``/pk/``).

    One server per configuration, all started first and loaded one at a time: at each
    point the configurations run back to back (B E A), so they share the machine's drift
    as a load round does, and the whole sweep runs ``scaling_passes`` times; a point's
    figures are the medians over the passes (the peak connections, the largest). The
    sampler counts each configuration's own connections (by ``application_name``) while
    the others sit idle.
    """
    configs = [c for c in options.scaling_configs if c not in failures]
    raw: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers: dict[str, BenchServer] = {}
        for config in configs:
            bench = BenchServer(config, options.database_url, options.pool_size, log_dir)
            try:
                servers[config] = stack.enter_context(bench)
            except ServerFailed as error:
                failures[f"scaling {config}"] = str(error)
                _say(f"  scaling {config} FAILED:\n" + _indent(str(error)))
        for number in range(options.scaling_passes):
            for clients in options.scaling_points:
                for config, bench in servers.items():
                    if f"scaling {config}" in failures:
                        continue
                    try:
                        row = _load_one(options, server, bench, "pk", "/pk/", clients,
                                        options.scaling_duration_s)
                    except (RuntimeError, OSError, ValueError) as error:
                        failures[f"scaling {config}"] = describe(error)
                        _say(f"  scaling {config} c={clients} FAILED: {describe(error)}")
                        continue
                    raw.append({"pass": number, "config": config, **row})
                    _say(f"  scaling pass {number + 1}/{options.scaling_passes} c={clients} "
                         f"{config}: {row['rps']:.0f} req/s p99 {row['p99_ms']:.1f} ms "
                         f"errors {row['errors']} conns {row['peak_server_connections']}")
    server.wait_for_no_connections()
    return report.summarise_scaling(raw, configs, options.scaling_points)


def run_inproc(options: Options, failures: dict[str, str]) -> dict[str, Any]:
    """``python -m bench.inproc`` per configuration per round, alternating A..F: the cost of
    one request with the WSGI application called in-process (no HTTP, one thread)."""
    rows: list[dict[str, Any]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_DATABASE_URL": options.database_url,
           "BENCH_POOL_SIZE": str(options.pool_size), "DJANGO_SETTINGS_MODULE": "bench.settings"}
    for number in range(options.inproc_rounds):
        for config in options.configs:
            if config in failures:
                continue
            command = [sys.executable, "-m", "bench.inproc", config,
                       "--budget", str(options.inproc_budget_s), "--repeats", "3"]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,  # noqa: S603
                                  check=False, env=env, timeout=300)
            if done.returncode != 0:
                failures[f"in-process {config}"] = (f"bench.inproc {config} exited "
                                                    f"{done.returncode}: "
                                                    + done.stderr.strip()[-1000:])
                continue
            means: dict[str, list[float]] = json.loads(done.stdout)
            for view, values in means.items():
                rows.append({"round": number, "config": config, "view": view,
                             "us": statistics.median(values), "repeats_us": values})
        _say(f"  in-process round {number + 1}/{options.inproc_rounds}, us per request "
             "(pk/three): " + ", ".join(
                 f"{config} " + "/".join(f"{r['us']:.0f}" for r in rows
                                         if r["round"] == number and r["config"] == config)
                 for config in options.configs if config not in failures))
    return {"rows": rows, "budget_s": options.inproc_budget_s,
            "summary": report.summarise_inproc(rows, options.configs)}


def run_micro(options: Options) -> dict[str, Any]:
    """``python -m bench.micro`` in a fresh process: it configures Django for itself."""
    command = [sys.executable, "-m", "bench.micro", "--database-url", options.database_url]
    if options.quick:
        command.append("--quick")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,  # noqa: S603
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    if done.returncode != 0:
        return {"error": f"bench.micro exited {done.returncode}: "
                         + done.stderr.strip()[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def run(options: Options) -> dict[str, Any]:
    """Run everything ``options`` asks for; write and print the results."""
    started = time.monotonic()
    log_dir = ROOT / "bench" / ".logs"  # one error log per server (git-ignored)
    for old in log_dir.glob("server-*.log"):  # the last run's
        old.unlink()
    server = Server(options.database_url)
    try:
        server.prepare_database()
        facts = machine_facts(server)
        _say(f"django-poolkit bench ({'quick' if options.quick else 'full'}) {facts['date']}: "
             f"{facts['nproc']} CPUs ({facts['cpu']}), load average "
             f"{' '.join(f'{x:.2f}' for x in facts['loadavg_start'])}, "
             f"{facts['other_server_connections_start']} other connections on the server")
        note = server.statement_counters()
        failures: dict[str, str] = {}
        _say("work: statements per request through a counting proxy, "
             f"{options.work_requests} requests per view")
        work = run_work(options, server, log_dir, failures)
        _say("load: " + " ".join(options.configs) + f" x {options.rounds} rounds, "
             f"{options.connections} connections, {options.duration_s:g} s per view")
        load = run_load(options, server, log_dir, failures)
        micro: dict[str, Any] = {}
        inproc: dict[str, Any] = {}
        if options.micro:
            _say("in-process: one request through the WSGI application, one thread")
            inproc = run_inproc(options, failures)
            _say("micro: in-process checkout + checkin")
            micro = run_micro(options)
        scaling: dict[str, Any] = {}
        if options.scaling_configs and options.scaling_points:
            _say("scaling: " + " ".join(options.scaling_configs) + " at "
                 + " ".join(str(p) for p in options.scaling_points) + " client connections")
            scaling = run_scaling(options, server, log_dir, failures)
        facts["loadavg_end"] = list(os.getloadavg())
        facts["other_server_connections_end"] = server.other_connections()
        facts["elapsed_s"] = round(time.monotonic() - started, 1)
    finally:
        server.close()
    results: dict[str, Any] = {
        "meta": facts,
        "setup": {
            "quick": options.quick, "rounds": options.rounds,
            "duration_s": options.duration_s, "connections": options.connections,
            "gunicorn": f"gthread, {WORKERS} workers x {THREADS} threads, --reuse-port",
            "pool_size_per_process": options.pool_size, "configs": DESCRIPTIONS,
            "work_requests": options.work_requests, "statement_counters": note,
            "scaling_points": list(options.scaling_points),
            "scaling_duration_s": options.scaling_duration_s,
            "scaling_passes": options.scaling_passes,
            "inproc_rounds": options.inproc_rounds,
        },
        "load": load,
        "failures": failures,
        "work": work,
        "inproc": inproc,
        "micro": micro,
        "scaling": scaling,
    }
    results["summary"] = report.summarise_load(results["load"], options.configs)
    results["targets"] = report.targets(results)
    written = report.write(results, options.out_dir)
    _say("")
    _say(report.markdown(results))
    _say("written: " + ", ".join(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
                                 else str(path) for path in written))
    return results


def main(argv: list[str] | None = None) -> int:
    """The command line of ``bench/run`` / ``python -m bench``."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "--cpu-render":
        from bench import cpu

        return cpu.main(["render", *args_in[1:]])
    if args_in and args_in[0] in ("cpu", "--cpu", "--memory"):
        # The CPU benchmark (bench/cpu.py): ``bench/run --cpu [options]``.
        from bench import cpu

        rest = args_in[1:] if args_in[0] != "--memory" else ["--memory", *args_in[1:]]
        return cpu.main(["cpu", *rest])
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 2 s, 3 scaling points: under 3 minutes")
    parser.add_argument("--rounds", type=int, help="rounds of A B H C D E F (default 9, quick 2)")
    parser.add_argument("--duration", type=float,
                        help="seconds of wrk per view and round (default 5, quick 2)")
    parser.add_argument("--connections", type=int,
                        help="wrk connections in the load rounds (default 32)")
    parser.add_argument("--pool-size", type=int, default=4,
                        help="connections per process for C, D and E (default 4; 8 threads)")
    parser.add_argument("--configs", default="".join(CONFIGS),
                        help="which configurations, e.g. BE (default ABHCDEF)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling curves")
    parser.add_argument("--no-micro", action="store_true",
                        help="skip the in-process and micro-benchmarks")
    parser.add_argument("--out", type=Path, help="results directory (default docs/bench for "
                        "the full run; bench/.results/quick with --quick and "
                        "bench/.results/partial with --configs, --no-scaling or --no-micro, "
                        "so only a whole run replaces the published results)")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/poolkit_bench"),
        help="the bench database, created if missing (default: $BENCH_DATABASE_URL or "
             "postgres://postgres@127.0.0.1:5432/poolkit_bench)")
    args = parser.parse_args(args_in)
    changes: dict[str, Any] = {"pool_size": args.pool_size,
                               "database_url": args.database_url, "micro": not args.no_micro}
    configs = tuple(c for c in args.configs.upper() if c in CONFIGS)
    changes["configs"] = configs
    if "B" not in configs:
        parser.error("--configs must include B: every ratio is to B")
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.duration is not None:
        changes["duration_s"] = args.duration
    if args.connections is not None:
        changes["connections"] = args.connections
    if args.out is not None:
        changes["out_dir"] = args.out
    elif not args.quick and (configs != CONFIGS or args.no_scaling or args.no_micro):
        changes["out_dir"] = ROOT / "bench" / ".results" / "partial"
    options = Options.quick_mode(**changes) if args.quick else Options(**changes)
    options.scaling_configs = () if args.no_scaling else tuple(
        c for c in options.scaling_configs if c in configs)
    run(options)
    return 0
