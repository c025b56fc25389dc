"""The seed's presets and sizing formulas, as pure functions and through ``POOLKIT``.

Every formula gets an explicit ``cores`` so the results do not depend on this machine; one
test proves that ``cores=None`` falls back to ``os.cpu_count()``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from django_poolkit.conf import PoolSettings, build_settings
from django_poolkit.ops import sizing
from django_poolkit.ops.sizing import PoolSize

DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"}}


def resolve(alias_settings: dict[str, Any], environ: dict[str, str] | None = None) -> PoolSettings:
    """The pool of ``default`` with ``alias_settings`` as its ``POOLKIT["DATABASES"]`` entry."""
    built, problems = build_settings(
        {"DATABASES": {"default": alias_settings}}, DATABASES, environ or {})
    assert problems == []
    assert built is not None
    return built.pools["default"]


@pytest.mark.parametrize(
    ("preset", "pool_size", "max_overflow"),
    [
        ("development", 5, 5),
        ("small_api", 10, 10),
        ("high_traffic", 20, 30),
        ("background_worker", 5, 5),
    ],
)
def test_presets_follow_the_seed_table(preset: str, pool_size: int, max_overflow: int) -> None:
    assert sizing.PRESETS[preset] == PoolSize(pool_size, max_overflow)
    pool = resolve({"preset": preset})
    assert (pool.pool_size, pool.max_overflow) == (pool_size, max_overflow)
    assert pool.origins["pool_size"] == pool.origins["max_overflow"] == f"preset:{preset}"


def test_preset_names_are_exactly_the_seed_scenarios() -> None:
    assert list(sizing.PRESETS) == ["development", "small_api", "high_traffic",
                                    "background_worker"]
    assert sizing.SIZING_FORMULAS == ("cores", "async", "production", "auto")


@pytest.mark.parametrize(
    ("cores", "spindles", "expected"),
    [(1, 0, 2), (4, 0, 8), (4, 2, 10), (16, 4, 36)],
)
def test_cores_formula(cores: int, spindles: int, expected: int) -> None:
    """``cores x 2 + spindles``; the formula says nothing about overflow, so it is kept."""
    assert sizing.cores_pool_size(cores, spindles, 7) == PoolSize(expected, 7)
    pool = resolve({"sizing": "cores", "cores": cores, "spindles": spindles})
    assert (pool.pool_size, pool.max_overflow) == (expected, 10)
    assert pool.origins["pool_size"] == "sizing:cores"
    assert pool.origins["max_overflow"] == "default"


def test_cores_formula_keeps_an_explicit_overflow() -> None:
    pool = resolve({"sizing": "cores", "cores": 4, "max_overflow": 3})
    assert (pool.pool_size, pool.max_overflow) == (8, 3)
    assert pool.origins["max_overflow"] == "setting"


@pytest.mark.parametrize(
    ("concurrency", "queries_per_request", "expected"),
    [
        (100, 1, 100),
        (100, 4, 25),
        (10, 3, 4),  # 3.33 rounds up: a fraction of a connection still needs one
        (10, 2.5, 4),
        (1, 10, 1),  # never below 1
    ],
)
def test_async_formula(concurrency: int, queries_per_request: float, expected: int) -> None:
    assert sizing.async_pool_size(concurrency, queries_per_request, 9) == PoolSize(expected, 9)
    pool = resolve({"sizing": "async", "concurrency": concurrency,
                    "queries_per_request": queries_per_request})
    assert (pool.pool_size, pool.max_overflow) == (expected, 10)
    assert pool.origins["pool_size"] == "sizing:async"
    assert pool.origins["max_overflow"] == "default"


@pytest.mark.parametrize(("cores", "expected"), [(1, 6), (4, 12), (8, 20)])
def test_production_formula(cores: int, expected: int) -> None:
    """``cores x 2 + 4``, and as much overflow again."""
    assert sizing.production_pool_size(cores) == PoolSize(expected, expected)
    pool = resolve({"sizing": "production", "cores": cores})
    assert (pool.pool_size, pool.max_overflow) == (expected, expected)
    assert pool.origins["pool_size"] == pool.origins["max_overflow"] == "sizing:production"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [("production", PoolSize(12, 12)), ("staging", PoolSize(5, 5)), ("", PoolSize(5, 5)),
     ("Production", PoolSize(5, 5))],  # the seed compares exactly
)
def test_auto_formula(environment: str, expected: PoolSize) -> None:
    assert sizing.auto_pool_size(4, environment) == expected
    pool = resolve({"sizing": "auto", "cores": 4, "environment": environment or None})
    assert PoolSize(pool.pool_size, pool.max_overflow) == expected
    assert pool.origins["pool_size"] == pool.origins["max_overflow"] == "sizing:auto"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"ENV": "production"}, PoolSize(12, 12)), ({"ENV": "dev"}, PoolSize(5, 5)),
     ({}, PoolSize(5, 5))],
)
def test_auto_formula_reads_env_when_environment_is_none(
    environ: dict[str, str], expected: PoolSize
) -> None:
    """Like the seed's ``os.getenv("ENV")``, read from the environment build_settings is given
    (never the process's own, so the result depends on the inputs only)."""
    pool = resolve({"sizing": "auto", "cores": 4}, environ)
    assert PoolSize(pool.pool_size, pool.max_overflow) == expected


def test_auto_formula_prefers_the_environment_setting_over_env() -> None:
    pool = resolve({"sizing": "auto", "cores": 4, "environment": "staging"},
                   {"ENV": "production"})
    assert PoolSize(pool.pool_size, pool.max_overflow) == PoolSize(5, 5)


@pytest.mark.parametrize(("formula", "expected"), [("cores", 6), ("production", 10)])
def test_cores_none_uses_os_cpu_count(
    monkeypatch: pytest.MonkeyPatch, formula: str, expected: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert sizing.default_cores() == 3
    assert resolve({"sizing": formula}).pool_size == expected


def test_unknown_cpu_count_counts_as_four(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.cpu_count()`` may return None; the seed falls back to 4."""
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert resolve({"sizing": "production"}).pool_size == 12


def test_async_pool_follows_the_sized_sync_pool_unless_set() -> None:
    pool = resolve({"preset": "high_traffic"})
    assert (pool.async_pool_size, pool.async_max_overflow) == (20, 30)
    assert pool.origins["async_pool_size"] == "preset:high_traffic"
    pool = resolve({"preset": "high_traffic", "async_pool_size": 3, "async_max_overflow": -1})
    assert (pool.async_pool_size, pool.async_max_overflow) == (3, -1)
    assert pool.origins["async_pool_size"] == "setting"


@pytest.mark.parametrize(
    ("pool", "processes", "hosts", "expected"),
    [(PoolSize(5, 10), 4, 1, 60), (PoolSize(10, 10), 3, 2, 120)],
)
def test_fleet_connections(pool: PoolSize, processes: int, hosts: int, expected: int) -> None:
    assert sizing.fleet_connections(pool, processes, hosts) == expected


def test_fleet_connections_refuses_unlimited_overflow() -> None:
    with pytest.raises(ValueError, match="unlimited max_overflow"):
        sizing.fleet_connections(PoolSize(5, -1), 4)
