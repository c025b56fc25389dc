"""The fault-injection suite: every test here is marked ``reliability`` and reports its figures
through :func:`tests.helpers.results.record`, one machine-readable ``RESULT`` line per
scenario.

The lines are printed in pytest's terminal summary (so CI logs carry them even when every
test passes) and written as JSON lines to ``$RELIABILITY_RESULTS`` when that is set, which is
how ``docs/reliability.rst`` gets its figures.

A scenario's bar (its timing bands, throughput ratios, recovery delays) is a reported verdict,
``met`` in its RESULT line and counted in the summary's last line: a loaded machine can miss a
bar, and CI must not fail on noise. The tests themselves assert only what holds on any
machine: an error surfaces, a hang is bounded generously, nothing is lost, connections are
counted. The fixtures the scenarios share are here too:
the scratch cluster to break, ORM access for aliases added at run time, a scratch table.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections

from ..helpers.faults import SCRATCH_PORT, Scratch
from ..helpers.results import results
from ..helpers.state import ROWS, SEQUENCE, outside_connection


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not results:
        return
    terminalreporter.section("reliability results")
    for result in results:
        terminalreporter.write_line("RESULT " + json.dumps(result, sort_keys=False))
    missed = [result for result in results if not result.get("met")]
    terminalreporter.write_line(
        f"reliability bars met: {len(results) - len(missed)} of {len(results)}"
        + "".join(f"; MISSED {result['scenario']!r} ({result['bar']})" for result in missed))
    target = os.environ.get("RELIABILITY_RESULTS")
    if target:
        with open(target, "w", encoding="utf-8") as stream:
            for result in results:
                stream.write(json.dumps(result) + "\n")


# -- scenarios 1-7: a scratch cluster to break ------------------------------------------------


@pytest.fixture(scope="module")
def scratch(scratch_clusters: set[int]) -> Iterator[Scratch]:
    """Part A's scratch cluster, running; healed (continued, started) after the module, and
    stopped when the test session ends (``scratch_clusters``)."""
    scratch_clusters.add(SCRATCH_PORT)
    cluster = Scratch(SCRATCH_PORT)
    cluster.heal()
    yield cluster
    cluster.heal()


@pytest.fixture
def unblocked(django_db_blocker: Any) -> Iterator[None]:
    """ORM access without pytest-django's test case, for tests on a scratch cluster: their
    aliases are added at run time, which its ``databases`` check cannot know (Django refuses
    them in threads). Nothing here touches the test database."""
    with django_db_blocker.unblock():
        try:
            yield
        finally:
            for wrapper in connections.all(initialized_only=True):
                wrapper.close()


# -- scenarios 8-14: the test database from several threads -----------------------------------


@pytest.fixture
def orm(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Database access for the scenarios, which add aliases at run time and use the ORM from
    several threads (mark the test ``django_db(transaction=True)``: that creates the test
    database); every wrapper is closed afterwards."""
    with django_db_blocker.unblock():
        try:
            yield
        finally:
            for wrapper in connections.all(initialized_only=True):
                with contextlib.suppress(Exception):
                    wrapper.close()


@pytest.fixture
def rows(orm: None) -> Iterator[psycopg.Connection[Any]]:
    """An empty ``relb_rows`` table (``tag`` unique, so a retried insert would fail loudly)
    and a fresh ``relb_seq`` sequence; yields an autocommit connection outside every pool."""
    with outside_connection() as connection:
        connection.execute(f"DROP TABLE IF EXISTS {ROWS}; DROP SEQUENCE IF EXISTS {SEQUENCE}; "
                           f"CREATE TABLE {ROWS} (id serial PRIMARY KEY, tag text UNIQUE); "
                           f"CREATE SEQUENCE {SEQUENCE}")
        try:
            yield connection
        finally:
            connection.execute(f"DROP TABLE IF EXISTS {ROWS}; "
                               f"DROP SEQUENCE IF EXISTS {SEQUENCE}")
