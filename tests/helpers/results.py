"""The reliability suite's RESULT lines: every scenario keeps its figures through
:func:`record`; ``tests/reliability/conftest.py`` prints them in pytest's terminal summary and
writes them to ``$RELIABILITY_RESULTS`` (how ``docs/reliability.rst`` gets its figures)."""

from __future__ import annotations

from typing import Any

#: Every result of this run, in the order the scenarios recorded them.
results: list[dict[str, Any]] = []


def record(scenario: str, *, bar: str, met: bool, **figures: Any) -> None:
    """Keep one scenario's result: its name, the bar it must meet, whether it met it, and the
    figures it measured (numbers rounded by the caller to what is meaningful)."""
    results.append({"scenario": scenario, "bar": bar, "met": met, **figures})
