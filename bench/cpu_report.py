"""The CPU benchmark's results: targets, text, reStructuredText, JSON and plots.

Pure functions of the results dict (except :func:`write` and :func:`plot`), so the tests
check the arithmetic and the rendering on made-up figures.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .ratios import ratio_text

__all__ = ["paired", "plot", "rst", "targets", "text", "write"]


def paired(rows: Sequence[dict[str, Any]], config: str, baseline: str,
           figure: str) -> dict[str, Any] | None:
    """Median and range of ``config``'s figure over ``baseline``'s, round by round."""
    ratios = []
    for number in sorted({row["round"] for row in rows}):
        by = {row["config"]: row.get(figure) for row in rows if row["round"] == number}
        if by.get(config) and by.get(baseline):
            ratios.append(by[config] / by[baseline])
    if not ratios:
        return None
    return {"median": round(statistics.median(ratios), 4), "low": round(min(ratios), 4),
            "high": round(max(ratios), 4), "n": len(ratios)}


def _figure(results: dict[str, Any]) -> str:
    """The figure of record: instructions when callgrind ran, else CPU microseconds."""
    return "instructions" if results.get("instructions") else "us"


def _ratio_text(ratio: dict[str, Any] | None) -> str:
    return ratio_text(ratio, 3, "-")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for the CPU benchmark, each with its measured value and verdict
    (``met`` True, False, or None when not measured)."""
    rows = results.get("rows", [])
    figure = _figure(results)
    unit = "instructions" if figure == "instructions" else "CPU time"
    found = []
    for baseline, bound, label in (("B", 1.03, "1.03 x B"), ("C", 1.0, "C"),
                                   ("H", 1.0, "B with health checks (H)")):
        ratio = paired(rows, "E", baseline, figure)
        found.append({"target": f"E's {unit} per request <= {label}",
                      "value": "not measured" if ratio is None
                      else f"E/{baseline} {_ratio_text(ratio)}",
                      "met": None if ratio is None else ratio["median"] <= bound})
    statements = results.get("statements", {})
    e, b = statements.get("E"), statements.get("B")
    found.append({"target": "E's statements per request == B's",
                  "value": "not measured" if e is None or b is None else
                  f"E {e['statements_per_request']:.3f}, B {b['statements_per_request']:.3f}",
                  "met": None if e is None or b is None else
                  abs(e["statements_per_request"] - b["statements_per_request"]) < 0.0005})
    checkout = results.get("checkout", {})
    ratio = checkout.get("ratio")
    found.append({"target": "poolkit checkout+checkin <= 1.5 x SQLAlchemy unchecked",
                  "value": "not measured" if ratio is None else
                  f"{checkout['poolkit']:.0f} vs {checkout['sqlalchemy']:.0f} "
                  f"{checkout['unit']} ({ratio:.2f}x)",
                  "met": None if ratio is None else ratio <= 1.5})
    return found


def _per_request(value: float, figure: str) -> str:
    return f"{value / 1000:.1f}k" if figure == "instructions" else f"{value:.1f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _ordered(names: Iterable[str]) -> list[str]:
    """Configurations in the benchmark's order (results.json stores them sorted)."""
    from bench.cpu import ASYNC_CONFIGS, CONFIGS

    known = [*CONFIGS, *ASYNC_CONFIGS]
    return sorted(names, key=lambda name: known.index(name) if name in known else len(known))


def _config_rows(results: dict[str, Any], key: str, rows_key: str, baseline: str,
                 descriptions: dict[str, str]) -> list[list[str]]:
    instructions = results.get(key.replace("process_us", "instructions"), {})
    process = results.get(key, {})
    out = []
    for name in _ordered(descriptions):
        description = descriptions[name]
        i = instructions.get(name)
        p = process.get(name)
        out.append([name, description,
                    "-" if i is None else f"{i['median'] / 1000:.1f}k",
                    "-" if i is None or name == baseline else _ratio_text(i["ratio"]),
                    "-" if p is None else f"{p['median']:.1f}",
                    "-" if p is None or name == baseline else _ratio_text(p["ratio"]),
                    f"{results['statements'][name]['statements_per_request']:.3f}"
                    if name in results.get("statements", {}) else "-"])
    return out


def _function_label(key: str) -> str:
    """``base.py:close`` -> ``django/db/backends/base/base.py:close()``: the profile keys by
    file name, the breakdown's list says which file (the first one of that name wins, as
    the profile summed them)."""
    from bench.cpu import BREAKDOWN_FUNCTIONS

    filename, _, function = key.partition(":")
    for fragment, wanted in BREAKDOWN_FUNCTIONS:
        if wanted == function and fragment.endswith("/" + filename):
            if function == "connect" and filename == "base.py":
                return "connect() (Django's, or poolkit's for a pool checkout)"
            return f"{fragment}:{function}()"
    return key


def _function_order(key: str) -> int:
    from bench.cpu import BREAKDOWN_FUNCTIONS

    filename, _, function = key.partition(":")
    for index, (fragment, wanted) in enumerate(BREAKDOWN_FUNCTIONS):
        if wanted == function and fragment.endswith("/" + filename):
            return index
    return len(BREAKDOWN_FUNCTIONS)


def _breakdown_rows(results: dict[str, Any]) -> list[list[str]]:
    profiles = results.get("profiles", {})
    b, e = profiles.get("B"), profiles.get("E")
    if not b or not e:
        return []
    extra = e["total_us"] - b["total_us"]

    def share(delta: float) -> str:
        return f"{delta / extra:+.0%}" if extra > 0 else "-"

    rows = [["(whole request, profiled)", f"{b['total_us']:.1f}", f"{e['total_us']:.1f}",
             f"{extra:+.1f}", share(extra)]]
    for label in e["packages_us"]:
        bv, ev = b["packages_us"].get(label, 0.0), e["packages_us"].get(label, 0.0)
        if bv or ev:
            rows.append([f"own time in {label}", f"{bv:.1f}", f"{ev:.1f}", f"{ev - bv:+.1f}",
                         share(ev - bv)])
    for name in sorted(set(b["functions_us"]) | set(e["functions_us"]), key=_function_order):
        bv, ev = b["functions_us"].get(name, 0.0), e["functions_us"].get(name, 0.0)
        rows.append([f"in {_function_label(name)} (inclusive)", f"{bv:.1f}", f"{ev:.1f}",
                     f"{ev - bv:+.1f}", share(ev - bv)])
    return rows


def decomposition_rows(results: dict[str, Any]) -> list[list[str]]:
    """E's and C's instructions over B's, split with the bare pool checkouts counted in the
    same run: the pool itself, and Django's ``connect()``/``close()`` around it (with the
    backend's hooks). The last row is the floor of any backend on SQLAlchemy's pool that
    runs Django's protocol as C does: B + C's protocol + SQLAlchemy's bare checkout."""
    instructions, checkout = results.get("instructions", {}), results.get("checkout", {})
    if checkout.get("unit") != "instructions" or not all(
            name in instructions for name in ("B", "C", "E")):
        return []
    b, c, e = (instructions[name]["median"] for name in ("B", "C", "E"))
    sqlalchemy, poolkit = checkout["sqlalchemy"], checkout["poolkit"]
    bare = checkout.get("psycopg_pool")

    def row(label: str, value: float) -> list[str]:
        return [label, f"{value / 1000:+.1f}k", f"{value / b:+.3f}"]

    rows = [row("E - B", e - b),
            row("  SQLAlchemy's QueuePool checkout + checkin, unchecked", sqlalchemy),
            row("  poolkit's pool on top of it (accounting, sharing slot, socket pre-ping, "
                "reset, recycle)", poolkit - sqlalchemy),
            row("  Django's connect()/close() around the checkout, and the backend's hooks",
                e - b - poolkit),
            row("C - B", c - b)]
    if bare is not None:
        rows += [row("  psycopg_pool getconn + putconn", bare),
                 row("  Django's connect()/close() around it", c - b - bare),
                 row("floor on SQLAlchemy's pool: C's protocol + SQLAlchemy's bare checkout",
                     c - b - bare + sqlalchemy)]
    return rows


def text(results: dict[str, Any]) -> str:
    """The report as Markdown (printed by the command, ``results.md``)."""
    meta, setup = results["meta"], results["setup"]
    header = ["config", "what", "instructions/request", "/ baseline (paired)",
              "CPU us/request", "/ baseline (paired)", "statements/request"]
    out = [f"# django-poolkit CPU benchmark, {meta['date']}", "",
           f"{meta['nproc']} CPUs ({meta['cpu']}), load average "
           f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])} at start, "
           f"{' '.join(f'{x:.2f}' for x in meta.get('loadavg_end', []))} at end. "
           f"Python {meta['python']}, PostgreSQL {meta['postgresql']}, "
           f"{meta.get('valgrind') or 'no valgrind'}. Versions: "
           + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items()))
           + f". Commit {meta['commit']}{' (uncommitted changes)' if meta['tree_dirty'] else ''}"
           f", django_poolkit sources sha256 {meta['django_poolkit_sha256']}. "
           f"{setup['rounds']} rounds; {setup['callgrind_requests']} requests per callgrind "
           f"run, {setup['requests']} per CPU-time run, after {setup['warmup']} of warm-up. "
           f"Elapsed {meta.get('elapsed_s', '?')} s"
           + (f", {meta['cpu_s']} s of CPU" if "cpu_s" in meta else "") + ".", "",
           "## Sync view (WSGI handler, one primary-key query), ratios to B", ""]
    out += _table(header, _config_rows(results, "process_us", "rows", "B",
                                       setup["configs"]))
    if setup.get("async_configs"):
        out += ["", "## Async view (ASGI handler), ratios to B async ORM", ""]
        out += _table(header, _config_rows(results, "async_process_us", "async_rows",
                                           "B async ORM", setup["async_configs"]))
    decomposition = decomposition_rows(results)
    if decomposition:
        out += ["", "## Where E's extra instructions go (callgrind, per request over B)", "",
                "The bare checkouts are counted in the same run (one pool, 2000 checkouts); "
                "the rest of E - B and C - B is Django's connection protocol around them.", ""]
        out += _table(["part", "instructions", "/ B"], decomposition)
    breakdown = _breakdown_rows(results)
    if breakdown:
        out += ["", "## Where E's extra time goes: cProfile, us per request (profiled)", "",
                "CPU time under cProfile (time.process_time as its clock), which inflates "
                "every function call several times over: read the shares of E - B, not the "
                "microseconds.", ""]
        out += _table(["where", "B", "E", "E - B", "share of E - B"], breakdown)
    memory = results.get("memory", {})
    if memory:
        out += ["", "## Memory", ""] + [f"- {line}" for line in memory_lines(memory)]
    out += ["", "## Targets", ""]
    out += _table(["target", "measured", "verdict"],
                  [[t["target"], t["value"],
                    {True: "met", False: "NOT met", None: "not measured"}[t["met"]]]
                   for t in results.get("targets", [])])
    return "\n".join(out) + "\n"


def memory_lines(memory: dict[str, Any]) -> list[str]:
    """The memory figures in words."""
    lines = []
    b, e = memory.get("B"), memory.get("E")
    if b and e:
        lines.append(f"4 aliases, resident memory: stock backend (B, one connection per "
                     f"alias) {b['rss_kib'] / 1024:.1f} MiB; poolkit (E, 4 pools filled, "
                     f"{e['server_connections']} connections) {e['rss_kib'] / 1024:.1f} MiB "
                     f"({(e['rss_kib'] - b['rss_kib']) / 1024:+.1f} MiB)")
        lines.append(f"per idle pooled connection, client side: "
                     f"{e['per_idle_connection_kib']:.0f} KiB")
    run = memory.get("long_run")
    if run:
        samples = run["samples"]
        lines.append(f"long run, {run['requests']} requests (E): resident memory "
                     f"{samples[0]['rss_kib'] / 1024:.1f} MiB after {samples[0]['requests']}, "
                     f"{samples[-1]['rss_kib'] / 1024:.1f} MiB at the end "
                     f"({run['rss_growth_kib']:+d} KiB); live Python objects "
                     f"{samples[0]['objects']} -> {samples[-1]['objects']} "
                     f"({run['objects_growth']:+d})")
    return lines


def rst(results: dict[str, Any]) -> str:
    """The results as reStructuredText (``docs/bench/cpu/results.rst``, included by
    ``docs/bench.rst``)."""
    body = text(results).splitlines()
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if not table:
            return
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        rule = "  ".join("=" * w for w in widths)
        out.extend(["", rule, "  ".join(c.ljust(w) for c, w in zip(table[0], widths,
                                                                    strict=True)).rstrip(),
                    rule])
        out.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                   for row in table[1:])
        out.extend([rule, ""])
        table.clear()

    for line in body:
        if line.startswith("|"):
            cells = [c.strip().replace("*", "\\*") or ".." for c in line.strip("|").split("|")]
            if all(set(c) <= {"-", " "} for c in cells):
                continue
            table.append(cells)
            continue
        flush()
        if line.startswith("# "):
            continue  # the page has its own title
        if line.startswith("## "):
            title = line[3:]
            out.extend([title, "^" * len(title)])
        else:
            out.append(line.replace("*", "\\*"))
    flush()
    return "\n".join(out).strip() + "\n"


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``cpu.png`` (instructions and CPU time per request per configuration) and
    ``breakdown.png`` (E minus B by package and by function, profiled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    setup = results["setup"]
    names = _ordered(list(setup["configs"]) + list(setup.get("async_configs", {})))
    instructions = {**results.get("instructions", {}), **results.get("async_instructions", {})}
    process = {**results.get("process_us", {}), **results.get("async_process_us", {})}
    figure, axes = plt.subplots(1, 2, figsize=(14, 5))
    for axis, values, label in ((axes[0], instructions, "thousand instructions per request"),
                                (axes[1], process, "CPU microseconds per request")):
        shown = [n for n in names if n in values]
        scale = 1000.0 if values is instructions else 1.0
        medians = [values[n]["median"] / scale for n in shown]
        errors = [[(values[n]["median"] - values[n]["low"]) / scale for n in shown],
                  [(values[n]["high"] - values[n]["median"]) / scale for n in shown]]
        colours = ["tab:green" if n.startswith("E") else "tab:blue" for n in shown]
        axis.barh(shown, medians, xerr=errors, color=colours)
        axis.invert_yaxis()
        axis.set_xlabel(label)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_title("callgrind (figure of record)")
    axes[1].set_title("time.process_time")
    figure.tight_layout()
    path = out_dir / "cpu.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    written.append(path)
    path = _plot_decomposition(results, out_dir, plt)
    if path is not None:
        written.append(path)
    breakdown = [row for row in _breakdown_rows(results) if not row[0].startswith("(")]
    if breakdown:
        figure, axis = plt.subplots(figsize=(10, 0.32 * len(breakdown) + 1.2))
        labels = [row[0] for row in breakdown]
        deltas = [float(row[3]) for row in breakdown]
        axis.barh(labels, deltas, color=["tab:red" if d > 0 else "tab:green" for d in deltas])
        axis.invert_yaxis()
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_xlabel("E minus B, profiled microseconds per request (cProfile)")
        axis.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        path = out_dir / "breakdown.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


def _plot_decomposition(results: dict[str, Any], out_dir: Path, plt: Any) -> Path | None:
    """``decomposition.png``: E's and C's instructions over B's, stacked by part (the
    callgrind decomposition), with the floor of a backend on SQLAlchemy's pool marked."""
    instructions, checkout = results.get("instructions", {}), results.get("checkout", {})
    if not decomposition_rows(results) or "psycopg_pool" not in checkout:
        return None
    b, c, e = (instructions[name]["median"] for name in ("B", "C", "E"))
    protocol_c = c - b - checkout["psycopg_pool"]
    bars = {
        "C: Django's pool": [("Django's connect()/close() (E: with poolkit's hooks)",
                              protocol_c, "tab:gray"),
                             ("psycopg_pool getconn+putconn", checkout["psycopg_pool"],
                              "tab:blue")],
        "E: poolkit": [("Django's connect()/close() (E: with poolkit's hooks)",
                        e - b - checkout["poolkit"], "tab:gray"),
                       ("SQLAlchemy QueuePool checkout+checkin", checkout["sqlalchemy"],
                        "tab:orange"),
                       ("poolkit's pool features", checkout["poolkit"] - checkout["sqlalchemy"],
                        "tab:green")],
    }
    figure, axis = plt.subplots(figsize=(10, 3.8))
    labelled: set[str] = set()
    for row, parts in enumerate(bars.values()):
        left = 0.0
        for label, value, colour in parts:
            share = value / b * 100
            axis.barh(row, share, left=left, color=colour,
                      label=None if label in labelled else label)
            labelled.add(label)
            left += share
    floor = (protocol_c + checkout["sqlalchemy"]) / b * 100
    axis.axvline(floor, color="black", linestyle="--", linewidth=1,
                 label=f"floor on SQLAlchemy's pool ({floor:.1f} %)")
    axis.axvline(3.0, color="tab:red", linestyle=":", linewidth=1, label="target: 3 % over B")
    axis.set_yticks(range(len(bars)), list(bars))
    axis.set_xlabel("instructions per request over B's, % of B (callgrind)")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    path = out_dir / "decomposition.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``results.json``, ``results.md``, ``results.rst`` and the plots in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in (("results.json", json.dumps(results, indent=1, sort_keys=True)),
                          ("results.md", text(results)), ("results.rst", rst(results))):
        path = out_dir / name
        path.write_text(content + ("" if content.endswith("\n") else "\n"))
        written.append(path)
    return written + plot(results, out_dir)
