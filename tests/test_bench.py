"""The benchmark's arithmetic and instruments (``bench/``), without running a benchmark.

Paired ratios, the wrk report parser, the summaries, verdicts and Markdown of a made-up run,
and the statement-counting proxy: its protocol parser on hand-made messages, and the proxy
itself between psycopg and the real PostgreSQL, where the counts must be exact. Nothing here
times anything, and nothing imports gunicorn, matplotlib or the pools the benchmark compares.
"""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import docutils.core
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import report
from bench.ratios import RatioSummary, paired_ratios, summarise
from bench.wire import FrontendParser, StatementCounter, classify
from bench.wrk import parse_duration_ms, parse_wrk

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:40001/pk/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    18.31ms   10.02ms 120.00ms   80.00%
    Req/Sec     0.88k   100.00     1.00k    70.00%
  Latency Distribution
     50%   16.87ms
     75%   21.00ms
     90%   30.50ms
     99%    1.02s
  3518 requests in 2.00s, 600.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   1759.00
Transfer/sec:    300.00KB
"""


def test_paired_ratios_divide_by_the_same_rounds_baseline():
    rounds: list[dict[str, float | None]] = [
        {"B": 100.0, "E": 97.0}, {"B": 200.0, "E": 210.0}, {"B": 50.0, "E": 45.0}]
    assert paired_ratios(rounds, "E") == [0.97, 1.05, 0.9]
    found = summarise(paired_ratios(rounds, "E"))
    assert found == RatioSummary(median=0.97, low=0.9, high=1.05, n=3)
    assert found.render() == "0.97 (0.90-1.05)"


def test_a_round_missing_a_figure_is_left_out_never_counted_as_zero():
    rounds: list[dict[str, float | None]] = [
        {"B": 100.0, "E": None}, {"B": 0.0, "E": 5.0}, {"E": 5.0}, {"B": 10.0, "E": 8.0}]
    assert paired_ratios(rounds, "E") == [0.8]
    single = summarise([0.8])
    assert single is not None
    assert single.render() == "0.80"
    assert summarise([]) is None


def test_wrk_report_is_parsed_with_latency_percentiles_and_errors():
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests == 3518
    assert result.duration_s == 2.0
    assert result.rps == 1759.0
    assert (result.p50_ms, result.p75_ms, result.p90_ms) == (16.87, 21.0, 30.5)
    assert result.p99_ms == 1020.0
    assert result.socket_errors == 5
    assert result.non_2xx == 4
    assert result.as_dict()["errors"] == 9


def test_wrk_durations_and_a_report_without_figures():
    assert parse_duration_ms("512.00us") == pytest.approx(0.512)
    assert parse_duration_ms("1.50m") == 90_000.0
    with pytest.raises(ValueError, match="not a wrk duration"):
        parse_duration_ms("12 parsecs")
    with pytest.raises(ValueError, match="no request summary"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def _load_row(number: int, config: str, view: str, rps: float, conns: int) -> dict[str, Any]:
    return {"round": number, "config": config, "view": view, "rps": rps,
            "p50_ms": 1000.0 / rps, "p99_ms": 4000.0 / rps, "errors": 0,
            "peak_server_connections": conns}


def _results() -> dict[str, Any]:
    """A made-up run: E at 0.98 and 0.96 of B on the two views, capped at 8 connections."""
    load = []
    for number, drift in enumerate((1.0, 0.7, 1.2)):
        load += [
            _load_row(number, "B", "pk", 1000 * drift, 16),
            _load_row(number, "E", "pk", 980 * drift, 8),
            _load_row(number, "B", "three", 500 * drift, 16),
            _load_row(number, "E", "three", 480 * drift, 8),
        ]

    def work(pk: dict[str, float], three: dict[str, float]) -> dict[str, Any]:
        def view(kinds: dict[str, float]) -> dict[str, Any]:
            return {"requests": 1000, "statements_per_request": sum(kinds.values()),
                    "per_request": kinds, "connections_opened_per_request": 0.0,
                    "statements_on_new_connections": {}}
        return {"pk": view(pk), "three": view(three),
                "server_life": {"transactions_per_request": 2.0, "sessions_per_request": 0.01}}

    results: dict[str, Any] = {
        "meta": {"date": "2026-11-26 09:00 UTC", "nproc": 2, "cpu": "test CPU",
                 "loadavg_start": [0.5, 0.4, 0.3], "loadavg_end": [1.0, 0.9, 0.8],
                 "other_server_connections_start": 0, "other_server_connections_end": 1,
                 "postgresql": "15", "python": "3.11", "wrk": "wrk 4.1.0",
                 "versions": {"django-poolkit": "0.1"}, "commit": "abc1234",
                 "tree_dirty": False},
        "setup": {"quick": False, "rounds": 3, "duration_s": 6.0, "connections": 32,
                  "gunicorn": "gthread, 2 workers x 8 threads, --reuse-port",
                  "pool_size_per_process": 4, "configs": {"B": "stock", "E": "poolkit"},
                  "statement_counters": None},
        "load": load,
        "failures": {},
        "work": {"B": work({"SELECT": 1.0}, {"SELECT": 3.0}),
                 "E": work({"SELECT": 1.0}, {"SELECT": 3.0, "ping": 1.0})},
        "micro": {"results": {
            "sqlalchemy_queuepool": {"label": "SQLAlchemy", "us": 8.0, "note": ""},
            "poolkit_engine_defaults": {"label": "poolkit", "us": 15.0, "note": ""},
            "poolkit_terminated_connection": {"ok": True, "detail": "replaced"}},
            "poolkit_vs_sqlalchemy": {"median": 1.4, "low": 1.3, "high": 1.6, "n": 5}},
        "scaling": {"B": [{"connections": 1, "rps": 900.0, "p99_ms": 4.0, "errors": 0,
                           "peak_server_connections": 16}],
                    "E": [{"connections": 1, "rps": 880.0, "p99_ms": 4.5, "errors": 0,
                           "peak_server_connections": 8}]},
    }
    results["summary"] = report.summarise_load(load, ("B", "E"))
    results["targets"] = report.targets(results)
    return results


def test_summary_pairs_every_round_with_its_own_b():
    summary = _results()["summary"]
    pk = summary["E"]["pk"]
    # The drift (0.7x to 1.2x) cancels out: every round's ratio is 0.98.
    assert pk["rps_ratio"] == {"median": pytest.approx(0.98), "low": pytest.approx(0.98),
                               "high": pytest.approx(0.98), "n": 3}
    assert pk["rps"] == 980.0
    assert pk["peak_server_connections"] == 8
    assert summary["E"]["three"]["rps_ratio"]["median"] == pytest.approx(0.96)


def test_targets_state_plainly_what_is_met_and_what_is_not():
    verdicts = {t["target"]: t["met"] for t in _results()["targets"]}
    assert verdicts["E/B req/s >= 0.97 (primary-key SELECT)"] is True
    assert verdicts["E/B req/s >= 0.97 (three queries)"] is False
    assert verdicts["E's server connections capped by the pool, B's not"] is True
    assert verdicts["E statements/request == B (primary-key SELECT)"] is True
    assert verdicts["E statements/request == B (three queries)"] is False
    # The paired per-round ratio decides, not the ratio of the two medians (1.88).
    assert verdicts["poolkit checkout+checkin (defaults) <= 1.5x SQLAlchemy unchecked"] is True
    assert verdicts["poolkit (defaults) never hands out a terminated connection"] is True


def test_a_configuration_that_failed_is_not_measured_rather_than_failed():
    results = _results()
    results["load"] = [row for row in results["load"] if row["config"] != "E"]
    results["failures"] = {"E": "server E exited with 3"}
    results["summary"] = report.summarise_load(results["load"], ("B", "E"))
    found = {t["target"]: t for t in report.targets(results)}
    assert found["E/B req/s >= 0.97 (three queries)"]["met"] is None
    assert found["E/B req/s >= 0.97 (three queries)"]["value"] == "server E exited with 3"


def test_markdown_has_the_ratio_table_work_and_verdicts():
    text = report.markdown(_results())
    assert "| E | primary-key SELECT | 980 | 1.02 | 4.08 | 0 | 8 | 0.98 (0.98-0.98) |" in text
    assert "| E | three queries | 1000 | 4.000 | SELECT 3.000, ping 1.000 | 0.000 |" in text
    assert "| E/B req/s >= 0.97 (three queries) | 0.96 (0.96-0.96) | NOT met |" in text
    assert "| B | 900 / 4.0 / 0 / 16 |" in text
    assert "(1.40x, range 1.30-1.60) | met |" in text


def test_scaling_points_are_medians_over_passes_paired_with_b():
    def row(number: int, config: str, rps: float, peak: int) -> dict[str, Any]:
        return {"pass": number, "config": config, "connections": 32, "rps": rps,
                "p50_ms": 10.0, "p99_ms": 1000.0 / rps, "errors": 1,
                "peak_server_connections": peak}

    raw = [row(0, "B", 1000.0, 16), row(0, "E", 900.0, 8), row(1, "B", 500.0, 15),
           row(1, "E", 500.0, 7), row(2, "B", 800.0, 16), row(2, "E", 760.0, 8)]
    curves = report.summarise_scaling(raw, ("B", "E", "A"), (1, 32))
    assert set(curves) == {"B", "E"}  # A never ran, c=1 never ran
    (point,) = curves["E"]
    assert point["rps"] == 760.0
    assert point["errors"] == 3
    assert point["peak_server_connections"] == 8
    assert point["rps_ratio"]["median"] == pytest.approx(0.95)
    assert (point["rps_ratio"]["low"], point["rps_ratio"]["high"]) == (0.9, 1.0)


def test_in_process_speed_is_b_time_over_the_configurations():
    rows = [{"round": 0, "config": "B", "view": "pk", "us": 500.0},
            {"round": 0, "config": "E", "view": "pk", "us": 625.0},
            {"round": 1, "config": "B", "view": "pk", "us": 400.0},
            {"round": 1, "config": "E", "view": "pk", "us": 400.0}]
    summary = report.summarise_inproc(rows, ("B", "E"))
    assert summary["E"]["pk"]["us"] == pytest.approx(512.5)
    assert summary["E"]["pk"]["speed_ratio"]["median"] == pytest.approx(0.9)
    assert summary["E"]["pk"]["speed_ratio"]["low"] == pytest.approx(0.8)


def test_statements_are_classified_by_kind():
    assert classify("") == "ping"
    assert classify(" select 1; ") == "ping"
    assert classify("SELECT 11") == "SELECT"
    assert classify("SELECT set_config('TimeZone', 'UTC', false)") == "SET"
    assert classify("set statement_timeout = 0") == "SET"
    assert classify("DISCARD ALL") == "DISCARD"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def test_parser_refuses_encryption_and_reads_simple_and_extended_queries():
    parser = FrontendParser()
    ssl_request = struct.pack("!ii", 8, 80877103)
    startup = struct.pack("!ii", 8 + 9, 196608) + b"user\0pg\0\0"
    forward, reply, statements = parser.feed(ssl_request + startup[:5])
    assert (forward, reply, statements) == (b"", b"N", [])  # the startup is not complete
    forward, reply, statements = parser.feed(startup[5:])
    assert forward == startup
    assert parser.connections == 1
    simple = _message(b"Q", b"SELECT 1\0")
    extended = (_message(b"P", b"s1\0SELECT $1\0\0\0")
                + _message(b"B", b"\0s1\0\0\0\0\0\0\0")
                + _message(b"E", b"\0\0\0\0\0")
                + _message(b"S", b""))
    again = _message(b"B", b"\0s1\0\0\0\0\0\0\0") + _message(b"E", b"\0\0\0\0\0")
    data = simple + extended + again
    # Byte by byte: a message split anywhere is still read whole.
    found: list[str] = []
    forwarded = b""
    for index in range(len(data)):
        forward, _, statements = parser.feed(data[index:index + 1])
        forwarded += forward
        found += statements
    assert forwarded == data
    assert found == ["SELECT 1", "SELECT $1", "SELECT $1"]


@pytest.fixture
def counter(server_dsn: str):
    params = conninfo_to_dict(server_dsn)
    proxy = StatementCounter(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    yield proxy, make_conninfo(server_dsn, host="127.0.0.1", port=proxy.port)
    proxy.close()


def _counted(proxy: StatementCounter, expected: dict[str, int]) -> dict[str, int]:
    """The proxy's counts once they equal ``expected``, or after 10 s (a bound, not a
    speed): the relay thread counts a message after forwarding it, so the client can have
    its answer before the count is made."""
    for _ in range(100):
        counts = proxy.counts()[0]
        if counts == expected:
            break
        time.sleep(0.1)
    return counts


def test_proxy_counts_exactly_what_psycopg_sends_the_real_server(counter):
    proxy, dsn = counter
    with psycopg.connect(dsn, autocommit=True) as first:
        first.execute("SELECT 1")
        assert _counted(proxy, {"ping": 1}) == {"ping": 1}
        proxy.reset()  # from here on, `first` is an old connection
        first.execute("SET work_mem = '8MB'")
        for number in range(3):  # the extended protocol, then a prepared statement
            assert first.execute("SELECT %s::int", (number,), prepare=number > 0
                                 ).fetchone() == (number,)
        with psycopg.connect(dsn, autocommit=True) as second:
            second.execute("")
            assert second.execute("SELECT count(*) FROM pg_class").fetchone()[0] > 0
    assert _counted(proxy, {"SET": 1, "SELECT": 4, "ping": 1}) == {
        "SET": 1, "SELECT": 4, "ping": 1}
    assert proxy.counts()[1] == 1
    assert proxy.new_connection_counts() == {"ping": 1, "SELECT": 1}
    assert ("SELECT $1::int", 3) in proxy.texts()


ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "docs" / "bench"


def test_the_published_results_are_one_full_run_of_the_command():
    # results.md, headline.rst and results.rst are what bench/run rendered from
    # results.json: the same renderer gives the same text, so the figures in the docs are
    # the run's, and docs/bench.rst quotes the run's Results section verbatim.
    results = json.loads((PUBLISHED / "results.json").read_text())
    assert results["setup"]["quick"] is False
    assert set(results["summary"]) == {"A", "B", "H", "C", "D", "E", "F"}
    assert (PUBLISHED / "results.md").read_text() == report.markdown(results)
    assert (PUBLISHED / "headline.rst").read_text() == report.headline_rst(results)
    section = report.results_rst(results)
    assert (PUBLISHED / "results.rst").read_text() == section
    assert section in (ROOT / "docs" / "bench.rst").read_text()
    assert report.headline_rst(results) in (ROOT / "docs" / "performance.rst").read_text()
    for plot in ("ratios.png", "scaling.png"):
        assert (PUBLISHED / plot).read_bytes().startswith(b"\x89PNG")


def test_the_benchmark_document_renders_without_a_warning():
    warnings = io.StringIO()
    docutils.core.publish_string(
        (ROOT / "docs" / "bench.rst").read_text(), writer="html",
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5})
    assert warnings.getvalue() == ""


# --- The CPU benchmark (bench/cpu.py, bench/cpu_report.py) --------------------------------------


def _cpu_results() -> dict[str, Any]:
    """A made-up CPU run: two rounds of B, H, C and E (instructions and CPU us)."""
    from bench import cpu_report

    rows = []
    for number, drift in enumerate((1.0, 1.3)):
        for config, instructions, us in (("B", 1_000_000, 300.0), ("H", 1_100_000, 330.0),
                                         ("C", 1_080_000, 320.0), ("E", 1_050_000, 310.0)):
            rows.append({"round": number, "config": config, "instructions": instructions,
                         "us": us * drift})
    configs = {"B": "stock", "H": "stock + health checks", "C": "Django's pool",
               "E": "poolkit"}

    def summary(figure: str) -> dict[str, Any]:
        found = {}
        for config in configs:
            mine = [row[figure] for row in rows if row["config"] == config]
            found[config] = {"median": sum(mine) / 2, "low": min(mine), "high": max(mine),
                             "ratio": cpu_report.paired(rows, config, "B", figure)}
        return found

    results: dict[str, Any] = {
        "meta": {"date": "2026-12-07 05:00 UTC", "nproc": 2, "cpu": "test CPU",
                 "loadavg_start": [9.0, 9.0, 9.0], "loadavg_end": [8.0, 8.0, 8.0],
                 "python": "3.11", "postgresql": "15", "valgrind": "valgrind-3.19.0",
                 "versions": {"django-poolkit": "0.1"}, "commit": "abc1234",
                 "tree_dirty": False, "django_poolkit_sha256": "0" * 16, "elapsed_s": 200},
        "setup": {"rounds": 2, "requests": 2000, "warmup": 200, "callgrind_requests": 100,
                  "callgrind_rounds": 2, "callgrind": True, "configs": configs,
                  "async_configs": {}},
        "rows": rows, "async_rows": [],
        "instructions": summary("instructions"), "process_us": summary("us"),
        "async_instructions": {}, "async_process_us": {},
        "statements": {config: {"statements_per_request": 1.0, "per_request": {"SELECT": 1.0},
                                "requests": 500, "connections_opened": 0}
                       for config in configs},
        "profiles": {}, "memory": {},
        "checkout": {"sqlalchemy": 40_000.0, "poolkit": 56_000.0, "psycopg_pool": 30_000.0,
                     "unit": "instructions", "ratio": 1.4},
    }
    results["statements"]["H"] = {"statements_per_request": 2.0,
                                  "per_request": {"SELECT": 1.0, "ping": 1.0},
                                  "requests": 500, "connections_opened": 0}
    results["targets"] = cpu_report.targets(results)
    return results


def test_cpu_ratios_pair_each_round_with_its_own_baseline():
    from bench import cpu_report

    results = _cpu_results()
    # Process time drifts 30 % between the rounds; the paired ratio does not move.
    ratio = cpu_report.paired(results["rows"], "E", "B", "us")
    assert ratio is not None
    assert ratio["n"] == 2
    assert ratio["low"] == ratio["high"] == ratio["median"] == pytest.approx(310 / 300,
                                                                             abs=1e-4)
    assert cpu_report.paired(results["rows"], "E", "C", "instructions")["median"] == \
        pytest.approx(1.05 / 1.08, abs=1e-4)
    assert cpu_report.paired(results["rows"], "E", "missing", "us") is None


def test_cpu_targets_use_instructions_and_say_what_is_met():
    verdicts = {t["target"]: t["met"] for t in _cpu_results()["targets"]}
    assert verdicts["E's instructions per request <= 1.03 x B"] is False  # 1.05
    assert verdicts["E's instructions per request <= C"] is True
    assert verdicts["E's instructions per request <= B with health checks (H)"] is True
    assert verdicts["E's statements per request == B's"] is True
    assert verdicts["poolkit checkout+checkin <= 1.5 x SQLAlchemy unchecked"] is True


def test_cpu_decomposition_splits_the_overhead_with_the_bare_checkouts():
    from bench import cpu_report

    rows = {row[0].strip(): row[1:] for row in
            cpu_report.decomposition_rows(_cpu_results())}
    assert rows["E - B"] == ["+50.0k", "+0.050"]
    assert rows["SQLAlchemy's QueuePool checkout + checkin, unchecked"] == ["+40.0k", "+0.040"]
    assert rows["C - B"] == ["+80.0k", "+0.080"]
    assert rows["Django's connect()/close() around it"] == ["+50.0k", "+0.050"]
    # The floor: C's protocol (80k - 30k of psycopg_pool) plus SQLAlchemy's checkout (40k).
    assert rows["floor on SQLAlchemy's pool: C's protocol + SQLAlchemy's bare checkout"] == [
        "+90.0k", "+0.090"]
    # Counted in CPU time only: no decomposition (the parts would not add up).
    results = _cpu_results()
    results["checkout"]["unit"] = "CPU us"
    assert cpu_report.decomposition_rows(results) == []


def test_cpu_report_renders_tables_and_valid_rst():
    from bench import cpu_report

    results = _cpu_results()
    text = cpu_report.text(results)
    assert "| E | poolkit | 1050.0k | 1.050 (1.050-1.050) | 356.5 | 1.033 (1.033-1.033) |" in text
    assert "| E's instructions per request <= 1.03 x B | E/B 1.050 (1.050-1.050) | NOT met |" \
        in text
    warnings = io.StringIO()
    docutils.core.publish_string(
        "Title\n=====\n\n" + cpu_report.rst(results), writer="html",
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5})
    assert warnings.getvalue() == ""


CPU_PUBLISHED = PUBLISHED / "cpu"


def test_the_published_cpu_results_are_one_run_of_the_command():
    # docs/bench/cpu/ is what bench/run --cpu wrote (with the memory figures of
    # bench/run --memory beside it), and docs/bench.rst quotes its section verbatim.
    from bench import cpu_report

    results = json.loads((CPU_PUBLISHED / "results.json").read_text())
    assert results["setup"]["callgrind"] is True
    assert {"B", "H", "C", "D", "E"} <= set(results["instructions"])
    assert results["targets"] == cpu_report.targets(results)
    assert (CPU_PUBLISHED / "results.md").read_text() == cpu_report.text(results)
    section = cpu_report.rst(results)
    assert (CPU_PUBLISHED / "results.rst").read_text() == section
    assert section in (ROOT / "docs" / "bench.rst").read_text()
    for plot in ("cpu.png", "decomposition.png", "breakdown.png"):
        assert (CPU_PUBLISHED / plot).read_bytes().startswith(b"\x89PNG")


def test_the_published_cpu_rerun_is_a_run_of_the_same_code():
    # docs/bench/cpu/rerun/ is the second run docs/bench.rst compares the first with.
    from bench import cpu_report

    first = json.loads((CPU_PUBLISHED / "results.json").read_text())
    rerun = json.loads((CPU_PUBLISHED / "rerun" / "results.json").read_text())
    assert rerun["meta"]["django_poolkit_sha256"] == first["meta"]["django_poolkit_sha256"]
    assert (CPU_PUBLISHED / "rerun" / "results.md").read_text() == cpu_report.text(rerun)
