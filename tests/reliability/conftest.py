"""The fault-injection suite: every test here is marked ``reliability`` and reports its figures
through :func:`record`, one machine-readable ``RESULT`` line per scenario.

The lines are printed in pytest's terminal summary (so CI logs carry them even when every
test passes) and written as JSON lines to ``$RELIABILITY_RESULTS`` when that is set, which is
how ``docs/reliability.rst`` gets its figures.

A scenario's bar (its timing bands, throughput ratios, recovery delays) is a reported verdict,
``met`` in its RESULT line and counted in the summary's last line: a loaded machine can miss a
bar, and CI must not fail on noise. The tests themselves assert only what holds on any
machine: an error surfaces, a hang is bounded generously, nothing is lost, connections are
counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

_results: list[dict[str, Any]] = []


def record(scenario: str, *, bar: str, met: bool, **figures: Any) -> None:
    """Keep one scenario's result: its name, the bar it must meet, whether it met it, and the
    figures it measured (numbers rounded by the caller to what is meaningful)."""
    _results.append({"scenario": scenario, "bar": bar, "met": met, **figures})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    terminalreporter.section("reliability results")
    for result in _results:
        terminalreporter.write_line("RESULT " + json.dumps(result, sort_keys=False))
    missed = [result for result in _results if not result.get("met")]
    terminalreporter.write_line(
        f"reliability bars met: {len(_results) - len(missed)} of {len(_results)}"
        + "".join(f"; MISSED {result['scenario']!r} ({result['bar']})" for result in missed))
    target = os.environ.get("RELIABILITY_RESULTS")
    if target:
        with open(target, "w", encoding="utf-8") as stream:
            for result in _results:
                stream.write(json.dumps(result) + "\n")
