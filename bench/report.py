"""Turning a run's raw figures into summaries, the targets' verdicts, Markdown, JSON and plots.

Pure functions of the results dict (except :func:`write` and :func:`plot`, which write files),
so the tests can check the arithmetic and the rendering on made-up figures.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .ratios import paired_ratios, ratio_text, summarise

__all__ = ["headline_rst", "markdown", "plot", "results_rst", "summarise_inproc",
           "summarise_load", "summarise_scaling", "targets", "write"]

VIEW_NAMES = {"pk": "primary-key SELECT", "three": "three queries"}
FIGURES = ("rps", "p50_ms", "p99_ms")


def summarise_load(rows: Sequence[dict[str, Any]], configs: Iterable[str]) -> dict[str, Any]:
    """Per configuration and view: medians of the absolute figures, errors, the peak server
    connections, and the paired ratios to B (median and range) of req/s, p50 and p99."""
    summary: dict[str, Any] = {}
    rounds = sorted({row["round"] for row in rows})
    for config in configs:
        summary[config] = {}
        for view in VIEW_NAMES:
            mine = [row for row in rows if row["config"] == config and row["view"] == view]
            if not mine:
                continue
            entry: dict[str, Any] = {
                "rounds": len(mine),
                "errors": sum(row["errors"] for row in mine),
                "peak_server_connections": max(row["peak_server_connections"] for row in mine),
            }
            for figure in FIGURES:
                entry[figure] = statistics.median(row[figure] for row in mine)
                per_round = [
                    {r["config"]: r[figure] for r in rows
                     if r["round"] == number and r["view"] == view}
                    for number in rounds]
                ratio = summarise(paired_ratios(per_round, config))
                entry[f"{figure}_ratio"] = None if ratio is None else {
                    "median": ratio.median, "low": ratio.low, "high": ratio.high,
                    "n": ratio.n}
            summary[config][view] = entry
    return summary


def summarise_scaling(raw: Sequence[dict[str, Any]], configs: Iterable[str],
                      points: Iterable[int]) -> dict[str, list[dict[str, Any]]]:
    """Per configuration, one row per number of client connections: the medians over the
    passes of req/s, p50 and p99, the errors summed, the largest peak of server connections,
    and req/s relative to B in the same pass (median), with the raw passes."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for config in configs:
        curve = []
        for clients in points:
            mine = [r for r in raw if r["config"] == config and r["connections"] == clients]
            if not mine:
                continue
            base = {r["pass"]: r["rps"] for r in raw
                    if r["config"] == "B" and r["connections"] == clients}
            ratio = summarise(paired_ratios(
                [{config: r["rps"], "B": base.get(r["pass"])} for r in mine], config))
            curve.append({
                "connections": clients, "passes": len(mine),
                "rps": statistics.median(r["rps"] for r in mine),
                "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                "errors": sum(r["errors"] for r in mine),
                "peak_server_connections": max(r["peak_server_connections"] for r in mine),
                "rps_ratio": None if ratio is None else {
                    "median": ratio.median, "low": ratio.low, "high": ratio.high,
                    "n": ratio.n},
                "raw": mine,
            })
        if curve:
            curves[config] = curve
    return curves


def summarise_inproc(rows: Sequence[dict[str, Any]], configs: Iterable[str]) -> dict[str, Any]:
    """Per configuration and view: the median of the in-process microseconds per request and
    the paired ratios to B (B's time divided by the configuration's, so that, like req/s,
    above 1 is faster than B)."""
    summary: dict[str, Any] = {}
    rounds = sorted({row["round"] for row in rows})
    for config in configs:
        summary[config] = {}
        for view in VIEW_NAMES:
            mine = [row["us"] for row in rows if row["config"] == config and row["view"] == view]
            if not mine:
                continue
            per_round = [
                {r["config"]: 1.0 / r["us"] for r in rows
                 if r["round"] == number and r["view"] == view and r["us"]}
                for number in rounds]
            ratio = summarise(paired_ratios(per_round, config))
            summary[config][view] = {
                "us": statistics.median(mine), "rounds": len(mine),
                "speed_ratio": None if ratio is None else {
                    "median": ratio.median, "low": ratio.low, "high": ratio.high,
                    "n": ratio.n}}
    return summary


def _micro_us(micro: dict[str, Any], key: str) -> float | None:
    entry = micro.get("results", {}).get(key)
    if isinstance(entry, dict) and entry.get("us") is not None:
        return float(entry["us"])
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and a verdict: ``met`` True, False,
    or None when it could not be measured (the reason is in ``value``)."""
    found: list[dict[str, Any]] = []
    summary = results.get("summary", {})
    failures = results.get("failures", {})
    e_summary = summary.get("E", {})
    for view in VIEW_NAMES:
        ratio = e_summary.get(view, {}).get("rps_ratio")
        target = f"E/B req/s >= 0.97 ({VIEW_NAMES[view]})"
        if ratio is None:
            found.append({"target": target, "value": failures.get("E", "not measured"),
                          "met": None})
        else:
            found.append({"target": target, "value": ratio_text(ratio),
                          "met": ratio["median"] >= 0.97})
    for other, label in (("H", "B with health checks (H)"), ("C", "Django's pool (C)")):
        for view in VIEW_NAMES:
            mine = e_summary.get(view, {}).get("rps_ratio")
            theirs = summary.get(other, {}).get(view, {}).get("rps_ratio")
            if mine is None or theirs is None:
                continue  # a run without that configuration has no such target
            found.append({"target": f"E req/s >= {label} ({VIEW_NAMES[view]})",
                          "value": f"E/B {mine['median']:.2f}, {other}/B "
                                   f"{theirs['median']:.2f}",
                          "met": mine["median"] >= theirs["median"]})
    pool_size = results.get("setup", {}).get("pool_size_per_process")
    cap = None if pool_size is None else pool_size * 2  # 2 workers
    scaling = results.get("scaling", {})
    e_peak = max((p["peak_server_connections"] for p in scaling.get("E", [])), default=None)
    b_peak = max((p["peak_server_connections"] for p in scaling.get("B", [])), default=None)
    if e_peak is None or b_peak is None or cap is None:
        found.append({"target": "E's server connections capped by the pool, B's not",
                      "value": "not measured", "met": None})
    else:
        found.append({"target": "E's server connections capped by the pool, B's not",
                      "value": f"E peak {e_peak} (cap {cap}), B peak {b_peak}",
                      "met": e_peak <= cap < b_peak})
    work = results.get("work", {})
    for view in VIEW_NAMES:
        target = f"E statements/request == B ({VIEW_NAMES[view]})"
        e_work = work.get("E", {}).get(view)
        b_work = work.get("B", {}).get(view)
        if e_work is None or b_work is None:
            found.append({"target": target, "value": "not measured", "met": None})
        else:
            e_n, b_n = e_work["statements_per_request"], b_work["statements_per_request"]
            found.append({"target": target, "value": f"E {e_n:.3f}, B {b_n:.3f}",
                          "met": abs(e_n - b_n) < 0.0005})
    micro = results.get("micro", {})
    unchecked = _micro_us(micro, "sqlalchemy_queuepool")
    poolkit = _micro_us(micro, "poolkit_engine_defaults")
    paired = micro.get("poolkit_vs_sqlalchemy")
    target = "poolkit checkout+checkin (defaults) <= 1.5x SQLAlchemy unchecked"
    if unchecked is None or poolkit is None:
        found.append({"target": target, "value": "not measured", "met": None})
    else:
        # The per-round ratio when the micro-benchmarks paired them, else the medians'.
        times = paired["median"] if paired else poolkit / unchecked
        spread = f", range {paired['low']:.2f}-{paired['high']:.2f}" if paired else ""
        found.append({"target": target,
                      "value": f"{poolkit:.1f} us vs {unchecked:.1f} us "
                               f"({times:.2f}x{spread})",
                      "met": times <= 1.5})
    sound = micro.get("results", {}).get("poolkit_terminated_connection")
    if isinstance(sound, dict):
        found.append({"target": "poolkit (defaults) never hands out a terminated connection",
                      "value": sound.get("detail", ""), "met": sound.get("ok")})
    return found


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown (what the command prints and ``results.md`` holds)."""
    meta = results["meta"]
    setup = results["setup"]
    out = [
        f"# django-poolkit benchmark, {meta['date']}"
        + (" (quick mode)" if setup.get("quick") else ""),
        "",
        f"Machine: {meta['nproc']} CPUs ({meta['cpu']}); load average at start "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in meta.get('loadavg_end', []))}; other client "
        f"connections on the PostgreSQL server at start {meta['other_server_connections_start']}"
        f", at end {meta.get('other_server_connections_end', '?')}. "
        f"PostgreSQL {meta['postgresql']}, Python {meta['python']}, {meta['wrk']}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f". Commit {meta['commit']}{' (uncommitted changes)' if meta['tree_dirty'] else ''}"
        + (f", django_poolkit sources sha256 {meta['django_poolkit_sha256']}"
           if meta.get("django_poolkit_sha256") else "") + ".",
        "",
        f"Server: gunicorn {setup['gunicorn']} on 127.0.0.1; wrk at {setup['connections']} "
        f"connections, {setup['duration_s']:g} s per view, {setup['rounds']} rounds of "
        f"A..F alternated, a new server each time; pool size {setup['pool_size_per_process']} "
        "per process for C, D and E (no overflow).",
        "",
    ]
    out += [f"- **{k}**: {v}" for k, v in setup["configs"].items()]
    out.append("")
    failures = results.get("failures", {})
    for config, reason in failures.items():
        out.append(f"**{config} could not run**: " + reason.replace("\n", " / ")[:600])
        out.append("")
    summary = results["summary"]
    out.append("## Load: medians and paired ratios to B (median and range over rounds)")
    out.append("")
    rows = []
    for config, views in summary.items():
        for view, entry in views.items():
            rows.append([config, VIEW_NAMES[view], f"{entry['rps']:.0f}",
                         f"{entry['p50_ms']:.2f}", f"{entry['p99_ms']:.2f}",
                         str(entry["errors"]), str(entry["peak_server_connections"]),
                         ratio_text(entry["rps_ratio"]), ratio_text(entry["p50_ms_ratio"]),
                         ratio_text(entry["p99_ms_ratio"])])
    out.append(_table(["config", "view", "req/s", "p50 ms", "p99 ms", "errors",
                       "peak server conns", "req/s / B", "p50 / B", "p99 / B"], rows))
    out.append("")
    work = results.get("work", {})
    if work:
        out.append("## Server work per request")
        out.append("")
        out.append("Statements the server executed per request once every server thread "
                   "had run (after a warm-up), counted on the wire by a proxy "
                   "(`bench/wire.py`), by kind (`ping` is an empty query or `SELECT 1`); "
                   "of them, those sent on connections opened during the count (connection "
                   "set-up); and transactions and new sessions per request over the "
                   "server's whole life (warm-up and connection set-up included), from "
                   "`pg_stat_database`.")
        note = setup.get("statement_counters")
        if note:
            out.append("")
            out.append(f"Note: {note}.")
        out.append("")
        rows = []
        for config, views in work.items():
            life = views.get("server_life", {})
            for view in VIEW_NAMES:
                entry = views.get(view)
                if entry is None:
                    continue
                kinds = ", ".join(f"{kind} {count:.3f}"
                                  for kind, count in entry["per_request"].items())
                on_new = sum(entry.get("statements_on_new_connections", {}).values())
                rows.append([config, VIEW_NAMES[view], str(entry["requests"]),
                             f"{entry['statements_per_request']:.3f}", kinds,
                             f"{on_new / entry['requests']:.3f}",
                             f"{entry['connections_opened_per_request']:.3f}",
                             f"{life.get('transactions_per_request', 0):.3f}",
                             f"{life.get('sessions_per_request', 0):.3f}"])
        out.append(_table(["config", "view", "requests", "statements/request", "by kind",
                           "of which on new connections/request", "connections opened/request",
                           "server life, both views: transactions/request",
                           "server life, both views: sessions/request"], rows))
        out.append("")
        extra = []
        for config, views in work.items():
            texts = sorted({text for view in VIEW_NAMES
                            for text, _ in views.get(view, {}).get("texts", [])
                            if '"bench_item"' not in text})
            if texts:
                extra.append(f"- {config}: " + "; ".join(f"`{text or '(empty query)'}`"
                                                         for text in texts))
        if extra:
            out.append("Statements besides the views' own queries:")
            out.append("")
            out.extend(extra)
            out.append("")
    inproc = results.get("inproc", {}).get("summary", {})
    if inproc:
        out.append("## In-process: one request through the WSGI application, one thread")
        out.append("")
        out.append("Each configuration's WSGI application (the same settings as its server) "
                   "called directly in a loop, real queries, no HTTP and no competing "
                   "threads: the Python-side cost of a request including its database round "
                   "trips. One process per configuration per round, alternating; the ratio "
                   "is B's time over the configuration's in the same round (above 1: faster "
                   "than B).")
        out.append("")
        rows = []
        for config, views in inproc.items():
            for view, entry in views.items():
                rows.append([config, VIEW_NAMES[view], f"{entry['us']:.0f}",
                             ratio_text(entry["speed_ratio"])])
        out.append(_table(["config", "view", "us per request", "speed / B"], rows))
        out.append("")
    micro = results.get("micro", {})
    if micro:
        out.append("## Micro: in-process cost of one operation (median of repeats)")
        out.append("")
        if "error" in micro:
            out.append(f"Micro-benchmarks failed: {micro['error']}")
        else:
            rows = []
            for entry in micro["results"].values():
                if "us" in entry:
                    value = "n/a" if entry["us"] is None else f"{entry['us']:.1f}"
                    rows.append([entry["label"], value, entry.get("note", "")])
            out.append(_table(["operation", "us", "note"], rows))
            for note in micro.get("notes", []):
                out.append("")
                out.append(f"Note: {note}")
        out.append("")
    scaling = results.get("scaling", {})
    if scaling:
        out.append("## Scaling (primary-key view): req/s, p99 ms, errors, peak server "
                   "connections by client connections (medians over the passes), and req/s "
                   "relative to B in the same pass")
        out.append("")
        points = sorted({p["connections"] for curve in scaling.values() for p in curve})
        rows = []
        for config, curve in scaling.items():
            by = {p["connections"]: p for p in curve}
            rows.append([config] + [
                (f"{by[c]['rps']:.0f} / {by[c]['p99_ms']:.1f} / {by[c]['errors']} / "
                 f"{by[c]['peak_server_connections']}") if c in by else "-" for c in points])
            if config != "B" and any(by[c].get("rps_ratio") for c in by):
                rows.append([f"{config}/B req/s"] + [
                    ratio_text(by[c].get("rps_ratio")) if c in by else "-" for c in points])
        out.append(_table(["config"] + [f"c={c}" for c in points], rows))
        out.append("")
    out.append("## Targets")
    out.append("")
    out.append(_table(["target", "measured", "verdict"],
                      [[t["target"], str(t["value"]), _verdict(t["met"])]
                       for t in results.get("targets", [])]))
    out.append("")
    return "\n".join(out)


#: One line per configuration for the headline table.
SHORT_NAMES = {
    "A": "Django, ``CONN_MAX_AGE=0``",
    "B": "Django, ``CONN_MAX_AGE=60``",
    "H": "Django, ``CONN_MAX_AGE=60``, ``CONN_HEALTH_CHECKS=True``",
    "C": "Django's psycopg pool",
    "D": "django-db-connection-pool",
    "E": "**django-poolkit, defaults**",
    "F": "plain WSGI + psycopg (ceiling)",
}


def headline_rst(results: dict[str, Any]) -> str:
    """The headline table in reStructuredText (``headline.rst``; docs/bench.rst and the
    performance page quote it): per configuration, req/s relative to B on both views (median and
    range of the paired ratios), statements per request, and peak server connections."""
    summary = results.get("summary", {})
    work = results.get("work", {})
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - configuration",
        "     - req/s vs B, primary-key view",
        "     - req/s vs B, three-query view",
        "     - statements per request (pk / three)",
        "     - peak server connections",
    ]
    for config, views in summary.items():
        if not views:
            continue
        statements = "/".join(
            f"{work[config][view]['statements_per_request']:.2f}"
            if view in work.get(config, {}) else "?" for view in VIEW_NAMES)
        peak = max(entry["peak_server_connections"] for entry in views.values())
        ratios = ["1 (baseline)"] * 2 if config == "B" else [
            ratio_text(views.get(view, {}).get("rps_ratio")) for view in VIEW_NAMES]
        lines += [
            f"   * - {config}: {SHORT_NAMES.get(config, config)}",
            f"     - {ratios[0]}",
            f"     - {ratios[1]}",
            f"     - {statements}",
            f"     - {peak}",
        ]
    return "\n".join(lines) + "\n"


def _rst_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines


def results_rst(results: dict[str, Any]) -> str:
    """The "Results" section of docs/bench.rst (``results.rst``): the run's facts, the
    headline table and plots, server work, in-process and micro figures, scaling and the
    targets' verdicts, all rendered from the results."""
    meta, setup = results["meta"], results["setup"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    out = [
        f"From ``bench/run`` on {meta['date']}: {meta['nproc']} CPUs ({meta['cpu']}), load "
        f"average {' '.join(f'{x:.2f}' for x in meta['loadavg_start'])} at the start and "
        f"{' '.join(f'{x:.2f}' for x in meta.get('loadavg_end', []))} at the end (the machine "
        f"is shared); PostgreSQL {meta['postgresql']}, Python {meta['python']}, {versions}; "
        f"commit {meta['commit']}" + (" with uncommitted changes" if meta["tree_dirty"] else "")
        + f". {setup['rounds']} rounds, {setup['duration_s']:g} s of wrk per view and round.",
        "",
        "Throughput relative to B (each round's req/s divided by the same round's B; median "
        "and range over the rounds), the statements the server executes per request, and the "
        "most server connections seen at once:",
        "",
        headline_rst(results).rstrip("\n"),
        "",
        ".. image:: bench/ratios.png",
        "   :alt: req/s of each configuration relative to B, per view",
        "",
    ]
    summary = results.get("summary", {})
    rows = []
    for config, views in summary.items():
        for view, entry in views.items():
            rows.append([config, VIEW_NAMES[view], f"{entry['rps']:.0f}",
                         f"{entry['p50_ms']:.1f}", f"{entry['p99_ms']:.1f}",
                         ratio_text(entry["p99_ms_ratio"]), str(entry["errors"])])
    out += ["Medians of the absolute figures (they drift between runs; the ratios above do "
            "not):", ""]
    out += _rst_table(["config", "view", "req/s", "p50 ms", "p99 ms", "p99 / B", "errors"],
                      rows)
    out.append("")
    work = results.get("work", {})
    if work:
        rows = []
        for config, views in work.items():
            cells = [config]
            for view in VIEW_NAMES:
                entry = views.get(view)
                cells.append("?" if entry is None else (
                    f"{entry['statements_per_request']:.3f} ("
                    + ", ".join(f"{kind} {count:.3f}"
                                for kind, count in entry["per_request"].items()) + ")"))
            extra = sorted({text for view in VIEW_NAMES
                            for text, _ in views.get(view, {}).get("texts", [])
                            if '"bench_item"' not in text})
            cells.append("; ".join(f"``{text}``" if text.strip() else "an empty query"
                                   for text in extra) or "none")
            rows.append(cells)
        out += ["Statements per request on warm connections, counted on the wire (exact), "
                "by kind; ``ping`` is an empty query or ``SELECT 1``:", ""]
        out += _rst_table(["config", "primary-key view", "three-query view",
                           "statements besides the views' own"], rows)
        out.append("")
    inproc = results.get("inproc", {}).get("summary", {})
    if inproc:
        rows = [[config] + [
            f"{views[view]['us']:.0f} us, {ratio_text(views[view]['speed_ratio'])}"
            if view in views else "?" for view in VIEW_NAMES]
            for config, views in inproc.items() if views]
        out += ["One request in-process (the WSGI application called directly, one "
                "thread, real queries): time per request, and speed relative to B in the "
                "same round:", ""]
        out += _rst_table(["config", "primary-key view", "three-query view"], rows)
        out.append("")
    micro = results.get("micro", {})
    if micro.get("results"):
        rows = [[entry["label"], f"{entry['us']:.1f}", entry.get("note", "")]
                for entry in micro["results"].values() if "us" in entry]
        out += ["Micro-benchmarks (one thread, one warm connection; median of interleaved "
                "rounds):", ""]
        out += _rst_table(["operation", "us", "note"], rows)
        out.append("")
    scaling = results.get("scaling", {})
    if scaling:
        points = sorted({p["connections"] for curve in scaling.values() for p in curve})
        rows = []
        for config, curve in scaling.items():
            by = {p["connections"]: p for p in curve}
            rows.append([config] + [
                f"{by[c]['rps']:.0f} / {by[c]['p99_ms']:.0f} / "
                f"{by[c]['peak_server_connections']}" if c in by else "-" for c in points])
            if config != "B" and any(by[c].get("rps_ratio") for c in by):
                rows.append([f"{config}/B req/s"] + [
                    ratio_text(by[c].get("rps_ratio")) if c in by else "-" for c in points])
        out += ["Scaling on the primary-key view: req/s / p99 ms / peak server connections "
                "by client connections (medians over the passes), and req/s relative to B "
                "in the same pass:", ""]
        out += _rst_table(["config"] + [str(c) for c in points], rows)
        out += ["", ".. image:: bench/scaling.png",
                "   :alt: req/s, p99 latency and server connections of B, E and A as client "
                "connections grow", ""]
    found = results.get("targets", [])
    if found:
        out += ["The issue's targets:", ""]
        out += _rst_table(["target", "measured", "verdict"],
                          [[t["target"], str(t["value"]).replace("*", "\\*"),
                            "**" + _verdict(t["met"]) + "**"] for t in found])
        out.append("")
    return "\n".join(out)


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``scaling.png`` (req/s, p99 and server connections against client connections) and
    ``ratios.png`` (req/s relative to B per configuration, median with the range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    scaling = results.get("scaling", {})
    if scaling:
        figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for config, curve in scaling.items():
            xs = [p["connections"] for p in curve]
            axes[0].plot(xs, [p["rps"] for p in curve], marker="o", label=config)
            axes[1].plot(xs, [p["p99_ms"] for p in curve], marker="o", label=config)
            axes[2].plot(xs, [p["peak_server_connections"] for p in curve], marker="o",
                         label=config)
        points = sorted({p["connections"] for curve in scaling.values() for p in curve})
        for axis, title in zip(axes, ("req/s", "p99 latency (ms)", "peak server connections"),
                               strict=True):
            axis.set_xscale("log", base=2)
            axis.set_xticks(points, [str(p) for p in points])
            axis.set_xlabel("client connections (wrk)")
            axis.set_title(title)
            axis.grid(True, alpha=0.3)
            axis.legend()
        axes[1].set_yscale("log")
        figure.suptitle(f"Scaling, primary-key view ({results['meta']['date']}, "
                        f"{results['meta']['nproc']} CPUs)")
        figure.tight_layout()
        path = out_dir / "scaling.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    summary = results.get("summary", {})
    configs = [c for c in summary if summary[c]]
    if configs:
        figure, axis = plt.subplots(figsize=(9, 4.2))
        width = 0.38
        for offset, view in enumerate(VIEW_NAMES):
            xs, medians, lows, highs = [], [], [], []
            for index, config in enumerate(configs):
                ratio = summary[config].get(view, {}).get("rps_ratio")
                if ratio is None:
                    continue
                xs.append(index + (offset - 0.5) * width)
                medians.append(ratio["median"])
                lows.append(ratio["median"] - ratio["low"])
                highs.append(ratio["high"] - ratio["median"])
            bars = axis.bar(xs, medians, width, yerr=[lows, highs], capsize=3,
                            label=VIEW_NAMES[view])
            axis.bar_label(bars, labels=[f"{m:.2f}" for m in medians], padding=2, fontsize=8)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.axhline(0.97, color="red", linewidth=0.8, linestyle="--", label="target E/B 0.97")
        axis.set_xticks(range(len(configs)), configs)
        axis.set_ylabel("req/s relative to B (same round)")
        axis.set_title("Paired ratios to B: median and range over rounds")
        axis.legend()
        axis.grid(True, axis="y", alpha=0.3)
        figure.tight_layout()
        path = out_dir / "ratios.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the plots into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    md_path = out_dir / "results.md"
    md_path.write_text(markdown(results))
    headline_path = out_dir / "headline.rst"
    headline_path.write_text(headline_rst(results))
    rst_path = out_dir / "results.rst"
    rst_path.write_text(results_rst(results))
    return [json_path, md_path, headline_path, rst_path, *plot(results, out_dir)]
