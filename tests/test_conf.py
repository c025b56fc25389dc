"""``settings.POOLKIT``: defaults, layering and origins, ENGINES, validation, laziness, reload.

Most tests call :func:`build_settings` with explicit ``POOLKIT``, ``DATABASES`` and environment,
so they need neither a database nor the process's environment. The laziness tests run Django
for real in a subprocess, with a broken ``POOLKIT`` from ``tests/settings_broken.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_poolkit import PoolkitConfigurationError, conf, get_engine
from django_poolkit.conf import KNOBS, PoolkitSettings, build_settings, get_settings, reload
from django_poolkit.exceptions import Problem

ROOT = Path(__file__).resolve().parent.parent
SENTINEL = "s3ntinel-PW-9f2"
DATABASES: dict[str, dict[str, Any]] = {
    "default": {"ENGINE": "django_poolkit.db.backends.postgresql", "NAME": "app", "OPTIONS": {}},
    "replica1": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"},
}
#: The hint listing every knob; other features may append knobs after the foundation's.
KNOB_KEYS = "Accepted keys: " + ", ".join(f'"{name}"' for name in KNOBS) + "."


def build(
    poolkit: Any = None,
    databases: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> PoolkitSettings:
    """The settings of a valid configuration (failing the test on any problem)."""
    built, problems = build_settings(poolkit, DATABASES if databases is None else databases,
                                     environ or {})
    assert problems == []
    assert built is not None
    return built


def problems_of(
    poolkit: Any,
    databases: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> list[Problem]:
    built, problems = build_settings(poolkit, DATABASES if databases is None else databases,
                                     environ or {})
    assert built is None
    return problems


@pytest.fixture
def no_poolkit_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests that read ``os.environ`` through get_settings() must not see the caller's
    ``POOLKIT_*`` variables."""
    for name in list(os.environ):
        if name.startswith("POOLKIT_") or name == "ENV":
            monkeypatch.delenv(name)
    reload()
    yield
    reload()


# Defaults


def test_the_foundation_knobs_come_first_in_documented_order() -> None:
    assert list(KNOBS)[:18] == [
        "pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping",
        "pool_use_lifo", "connect_timeout", "statement_timeout", "application_name", "preset",
        "sizing", "cores", "spindles", "concurrency", "queries_per_request", "environment",
        "async_pool_size", "async_max_overflow"]


def test_defaults() -> None:
    """The seed's ``create_engine(...)`` example, knob by knob."""
    pool = build({}).pools["default"]
    assert pool.pool_size == 5
    assert pool.max_overflow == 10
    assert pool.pool_timeout == 30
    assert pool.pool_recycle == 3600
    assert pool.pool_pre_ping is True
    assert pool.connect_timeout == 10
    assert pool.statement_timeout is None  # an ORM pool: the server's (stock Django's)
    assert pool.pool_use_lifo is False
    assert pool.application_name == "poolkit:{alias}:{host}:{pid}"
    assert (pool.preset, pool.sizing, pool.cores, pool.concurrency, pool.environment) == (
        None, None, None, None, None)
    assert (pool.spindles, pool.queries_per_request) == (0, 1)
    assert (pool.async_pool_size, pool.async_max_overflow) == (5, 10)
    assert pool.url is None
    assert pool.capacity == 15  # the seed: "Total max connections = pool_size + max_overflow"
    assert set(pool.origins.values()) == {"default"}


@pytest.mark.parametrize("poolkit", [None, {}, {"DEFAULTS": {}, "DATABASES": {}, "ENGINES": {}}])
def test_an_empty_poolkit_gives_every_alias_the_defaults(poolkit: Any) -> None:
    built = build(poolkit)
    assert list(built.pools) == ["default", "replica1"]
    # replica1 is on Django's stock backend: its pool serves SQLAlchemy only.
    assert built.pools["default"] == replace(built.pools["replica1"], alias="default",
                                             statement_timeout=None)
    assert built.env_prefix == "POOLKIT_"
    assert built.for_alias("nope") is None


def test_statement_timeout_is_the_servers_on_orm_pools_and_30_s_elsewhere() -> None:
    """A pool that serves the ORM (the pooled backend) sends none unless asked; the seed's
    30 s stays the default of SQLAlchemy-only pools (ENGINES, an alias on another backend)."""
    built = build({"ENGINES": {"stats": {"url": "postgresql://u@h/stats"}}})
    assert [(name, pool.statement_timeout, pool.origins["statement_timeout"])
            for name, pool in built.pools.items()] == [
        ("default", None, "default"), ("replica1", 30000, "default"),
        ("stats", 30000, "default")]
    asked = build({"DEFAULTS": {"statement_timeout": 5000}}).pools["default"]
    assert (asked.statement_timeout, asked.origins["statement_timeout"]) == (5000, "setting")
    from_env = build(environ={"POOLKIT_STATEMENT_TIMEOUT": "7000"}).pools["default"]
    assert from_env.statement_timeout == 7000


def test_unlimited_overflow_has_no_capacity() -> None:
    assert build({"DEFAULTS": {"max_overflow": -1}}).pools["default"].capacity is None


# Layering and origins

#: pool_timeout set in every layer, weakest first: (layer, value, origin).
LAYERS: list[tuple[str, float, str]] = [
    ("DEFAULTS", 1, "setting"),
    ("DATABASES", 2, "setting"),
    ("url", 3, "url"),
    ("env", 4, "environment"),
    ("env alias", 5, "environment"),
]


def _stack(count: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """POOLKIT, DATABASES and environment with pool_timeout set in the first ``count``
    layers."""
    poolkit: dict[str, Any] = {}
    options: dict[str, Any] = {}
    environ: dict[str, str] = {}
    for layer, value, _origin in LAYERS[:count]:
        if layer == "DEFAULTS":
            poolkit["DEFAULTS"] = {"pool_timeout": value}
        elif layer == "DATABASES":
            poolkit["DATABASES"] = {"default": {"pool_timeout": value}}
        elif layer == "url":
            options["pool_timeout"] = str(value)
        elif layer == "env":
            environ["POOLKIT_POOL_TIMEOUT"] = str(value)
        else:
            environ["POOLKIT_DEFAULT__POOL_TIMEOUT"] = str(value)
    databases = {"default": {**DATABASES["default"], "OPTIONS": options}}
    return poolkit, databases, environ


@pytest.mark.parametrize("count", range(len(LAYERS) + 1))
def test_each_layer_beats_the_weaker_ones(count: int) -> None:
    """defaults < DEFAULTS < DATABASES[alias] < OPTIONS (URL) < POOLKIT_<KNOB> <
    POOLKIT_<ALIAS>__<KNOB>."""
    poolkit, databases, environ = _stack(count)
    pool = build(poolkit, databases, environ).pools["default"]
    expected, origin = (30, "default") if count == 0 else LAYERS[count - 1][1:]
    assert pool.pool_timeout == expected
    assert pool.origins["pool_timeout"] == origin


def test_per_alias_settings_stay_with_their_alias() -> None:
    built = build({"DEFAULTS": {"pool_size": 7},
                   "DATABASES": {"replica1": {"pool_size": 20, "pool_pre_ping": False}}})
    assert (built.pools["default"].pool_size, built.pools["default"].pool_pre_ping) == (7, True)
    assert (built.pools["replica1"].pool_size, built.pools["replica1"].pool_pre_ping) == (
        20, False)


@pytest.mark.parametrize("value", ["10", 10])
def test_url_options_accept_text_and_ints(value: Any) -> None:
    """django-environ turns ``?pool_size=10`` into the int 10 and ``?pool_timeout=2.5`` into
    text: both are read."""
    databases = {"default": {**DATABASES["default"],
                             "OPTIONS": {"pool_size": value, "pool_timeout": "2.5",
                                         "pool_pre_ping": "false", "sslmode": "require"}}}
    pool = build({}, databases).pools["default"]
    assert (pool.pool_size, pool.pool_timeout, pool.pool_pre_ping) == (10, 2.5, False)
    assert {pool.origins[key] for key in ("pool_size", "pool_timeout", "pool_pre_ping")} == {
        "url"}


def test_database_url_query_parameters_through_django_environ() -> None:
    import environ

    config = environ.Env.db_url_config(
        f"postgres://app:{SENTINEL}@db:5432/app?pool_size=12&max_overflow=-1&pool_recycle=-1"
        "&pool_pre_ping=1&statement_timeout=0&preset=small_api&sslmode=require")
    config["ENGINE"] = "django_poolkit.db.backends.postgresql"
    pool = build({}, {"default": config}).pools["default"]
    assert (pool.pool_size, pool.max_overflow, pool.pool_recycle) == (12, -1, -1)
    assert (pool.pool_pre_ping, pool.statement_timeout, pool.preset) == (True, 0, "small_api")
    assert pool.origins["pool_size"] == "url"
    assert SENTINEL not in repr(pool)


@pytest.mark.parametrize(
    ("poolkit", "options", "environ", "expected"),
    [
        pytest.param({"DEFAULTS": {"preset": "small_api"}}, {}, {},
                     {"pool_size": (10, "preset:small_api"),
                      "max_overflow": (10, "preset:small_api")}, id="preset-alone"),
        pytest.param({"DEFAULTS": {"preset": "small_api"},
                      "DATABASES": {"default": {"pool_size": 3}}}, {}, {},
                     {"pool_size": (3, "setting"), "max_overflow": (10, "preset:small_api")},
                     id="stronger-layer-sets-size"),
        pytest.param({"DATABASES": {"default": {"preset": "high_traffic", "max_overflow": 2}}},
                     {}, {},
                     {"pool_size": (20, "preset:high_traffic"), "max_overflow": (2, "setting")},
                     id="same-layer-explicit-wins"),
        pytest.param({"DEFAULTS": {"pool_size": 3},
                      "DATABASES": {"default": {"preset": "high_traffic"}}}, {}, {},
                     {"pool_size": (20, "preset:high_traffic"),
                      "max_overflow": (30, "preset:high_traffic")},
                     id="preset-beats-weaker-explicit"),
        pytest.param({"DATABASES": {"default": {"preset": "high_traffic"}}},
                     {"max_overflow": "4"}, {},
                     {"pool_size": (20, "preset:high_traffic"), "max_overflow": (4, "url")},
                     id="url-beats-preset"),
        pytest.param({"DATABASES": {"default": {"pool_size": 3}}}, {},
                     {"POOLKIT_PRESET": "background_worker"},
                     {"pool_size": (5, "preset:background_worker"),
                      "max_overflow": (5, "preset:background_worker")},
                     id="env-preset-beats-setting"),
        pytest.param({}, {}, {"POOLKIT_DEFAULT__PRESET": "small_api", "POOLKIT_POOL_SIZE": "3"},
                     {"pool_size": (10, "preset:small_api"),
                      "max_overflow": (10, "preset:small_api")},
                     id="alias-env-preset-beats-global-env"),
        pytest.param({"DEFAULTS": {"preset": "high_traffic"},
                      "DATABASES": {"default": {"sizing": "cores", "cores": 2}}}, {}, {},
                     {"pool_size": (4, "sizing:cores"),
                      "max_overflow": (30, "preset:high_traffic")},
                     id="stronger-sizing-over-preset"),
        pytest.param({"DEFAULTS": {"sizing": "production", "cores": 2},
                      "DATABASES": {"default": {"preset": "small_api"}}}, {}, {},
                     {"pool_size": (10, "preset:small_api"),
                      "max_overflow": (10, "preset:small_api")},
                     id="stronger-preset-over-sizing"),
        pytest.param({"DATABASES": {"default": {"sizing": "production", "cores": 2}}}, {},
                     {"POOLKIT_PRESET": "small_api"},
                     {"pool_size": (10, "preset:small_api"),
                      "max_overflow": (10, "preset:small_api")},
                     id="env-preset-over-setting-sizing"),
        pytest.param({"DATABASES": {"default": {"preset": "high_traffic", "sizing": "cores",
                                                "cores": 2}}}, {}, {},
                     {"pool_size": (4, "sizing:cores"),
                      "max_overflow": (30, "preset:high_traffic")},
                     id="same-layer-sizing-computes-size-preset-keeps-overflow"),
        pytest.param({"DEFAULTS": {"sizing": "production", "cores": 1}}, {"pool_size": 9}, {},
                     {"pool_size": (9, "url"), "max_overflow": (6, "sizing:production")},
                     id="url-size-beats-sizing"),
    ],
)
def test_presets_and_sizing_yield_to_explicit_values_at_least_as_strong(
    poolkit: dict[str, Any],
    options: dict[str, Any],
    environ: dict[str, str],
    expected: dict[str, tuple[int, str]],
) -> None:
    databases = {"default": {**DATABASES["default"], "OPTIONS": options}}
    pool = build(poolkit, databases, environ).pools["default"]
    assert {key: (getattr(pool, key), pool.origins[key]) for key in expected} == expected


# ENGINES


def test_engines_are_extra_pools_with_their_own_url() -> None:
    url = f"postgresql://reporter:{SENTINEL}@warehouse:5432/stats"
    built = build({"DEFAULTS": {"pool_timeout": 5},
                   "ENGINES": {"analytics": {"url": url, "preset": "small_api"}}},
                  environ={"POOLKIT_ANALYTICS__MAX_OVERFLOW": "2"})
    engine = built.pools["analytics"]
    assert engine.url == url
    assert (engine.pool_size, engine.max_overflow, engine.pool_timeout) == (10, 2, 5)
    assert engine.origins["max_overflow"] == "environment"
    assert built.pools["default"].url is None
    assert SENTINEL not in repr(engine)
    assert SENTINEL not in repr(built)


def test_an_engine_url_can_come_from_the_environment() -> None:
    url = f"postgresql://reporter:{SENTINEL}@warehouse/stats"
    built = build({"ENGINES": {"analytics": {"url": "postgresql://reporter@old/stats"}}},
                  environ={"POOLKIT_ANALYTICS__URL": url})
    assert built.pools["analytics"].url == url


def test_sqlite_engines_are_accepted() -> None:
    assert build({"ENGINES": {"cache": {"url": "sqlite:///cache.db"}}}).pools["cache"].url == (
        "sqlite:///cache.db")


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        pytest.param({}, Problem(
            'POOLKIT["ENGINES"]["analytics"]["url"]',
            "is required: the database URL this engine connects to",
            'Add "url": "postgresql://user@host/dbname" (the password may come from its '
            '"password" key or the environment).', "poolkit.E007"), id="missing"),
        pytest.param({"url": ""}, Problem(
            'POOLKIT["ENGINES"]["analytics"]["url"]',
            "is required: the database URL this engine connects to",
            'Add "url": "postgresql://user@host/dbname" (the password may come from its '
            '"password" key or the environment).', "poolkit.E007"), id="empty"),
        pytest.param({"url": f"postgresql://u:{SENTINEL}@warehouse:port/stats"}, Problem(
            'POOLKIT["ENGINES"]["analytics"]["url"]',
            "is not a database URL SQLAlchemy can parse",
            "Use the form postgresql://user:password@host:port/dbname.", "poolkit.E007"),
            id="bad-port"),
        pytest.param({"url": f"not a url {SENTINEL}"}, Problem(
            'POOLKIT["ENGINES"]["analytics"]["url"]',
            "is not a database URL SQLAlchemy can parse",
            "Use the form postgresql://user:password@host:port/dbname.", "poolkit.E007"),
            id="garbage"),
        pytest.param({"url": f"mysql://u:{SENTINEL}@warehouse/stats"}, Problem(
            'POOLKIT["ENGINES"]["analytics"]["url"]',
            'uses "mysql", which poolkit does not pool',
            "Use a postgresql:// or sqlite:// URL.", "poolkit.E007"), id="mysql"),
        pytest.param({"ur1": f"postgresql://u:{SENTINEL}@warehouse/stats",
                      "url": "postgresql://u@warehouse/stats"}, Problem(
            'POOLKIT["ENGINES"]["analytics"]["ur1"]', 'unknown key; did you mean "url"?',
            KNOB_KEYS[:-1] + ', "url", "password".', "poolkit.E002"), id="misspelt-key"),
    ],
)
def test_engine_url_problems_never_show_the_url(engine: dict[str, Any], expected: Problem) -> None:
    problems = problems_of({"ENGINES": {"analytics": engine}})
    assert problems == [expected]
    assert SENTINEL not in str(PoolkitConfigurationError(problems))
    assert SENTINEL not in repr(PoolkitConfigurationError(problems))


def test_an_engine_named_like_a_database_alias_is_a_conflict() -> None:
    url = f"postgresql://u:{SENTINEL}@warehouse/stats"
    assert problems_of({"ENGINES": {"replica1": {"url": url}}}) == [Problem(
        'POOLKIT["ENGINES"]["replica1"]', "has the name of a DATABASES alias",
        'Configure that alias under POOLKIT["DATABASES"]["replica1"], or give the engine '
        "another name.", "poolkit.E005")]


# Validation: the exact text of every kind of problem

ALIASES_HINT = 'settings.DATABASES has: "default", "replica1".'
#: Top-level sections other features register (HEALTH, ...): valid keys, listed after ours.
OTHER_KEYS = [key for key in dict.fromkeys([*conf.TOP_LEVEL_KEYS, *conf.SECTION_PARSERS])
              if key not in ("DEFAULTS", "DATABASES", "ENGINES", "ENV_PREFIX")]
OTHER_SECTIONS = "".join(f", {key}" for key in OTHER_KEYS)


@pytest.mark.parametrize(
    ("poolkit", "expected"),
    [
        pytest.param([("DEFAULTS", {})], Problem(
            "POOLKIT", "must be a dict, got list",
            "Write POOLKIT = {...} with the keys DEFAULTS, DATABASES, ENGINES, ENV_PREFIX"
            f"{OTHER_SECTIONS}.",
            "poolkit.E001"), id="poolkit-not-a-dict"),
        pytest.param({"DEFAULTS": 10}, Problem(
            'POOLKIT["DEFAULTS"]', "must be a dict of pool settings, got int",
            'Write a dict such as {"pool_size": 10}.', "poolkit.E001"), id="defaults-not-a-dict"),
        pytest.param({"DATABASES": ["default"]}, Problem(
            'POOLKIT["DATABASES"]', "must be a dict of alias -> pool settings, got list",
            'Write {"default": {"pool_size": 10}}.', "poolkit.E001"), id="databases-not-a-dict"),
        pytest.param({"DATABASES": {"default": "small_api"}}, Problem(
            'POOLKIT["DATABASES"]["default"]', "must be a dict of pool settings, got str",
            'Write a dict such as {"pool_size": 10}.', "poolkit.E001"), id="alias-not-a-dict"),
        pytest.param({"ENGINES": "postgresql://u@h/db"}, Problem(
            'POOLKIT["ENGINES"]', "must be a dict of engine name -> {url, pool settings}, got str",
            'Write {"analytics": {"url": "postgresql://user@host/dbname"}}.', "poolkit.E001"),
            id="engines-not-a-dict"),
        pytest.param({"DATABASES": {"default": {"pool_sise": 10}}}, Problem(
            'POOLKIT["DATABASES"]["default"]["pool_sise"]', 'unknown key; did you mean '
            '"pool_size"?', KNOB_KEYS, "poolkit.E002"), id="misspelt-knob"),
        pytest.param({"DEFAULTS": {"POOL_SIZE": 10}}, Problem(
            'POOLKIT["DEFAULTS"]["POOL_SIZE"]', 'unknown key; did you mean "pool_size"?',
            KNOB_KEYS, "poolkit.E002"), id="upper-case-knob"),
        pytest.param({"DEFAULTS": {"xyzzy": 1}}, Problem(
            'POOLKIT["DEFAULTS"]["xyzzy"]', "unknown key", KNOB_KEYS, "poolkit.E002"),
            id="unknown-knob-no-suggestion"),
        pytest.param({"DEFAULT": {}}, Problem(
            'POOLKIT["DEFAULT"]', 'unknown key; did you mean "DEFAULTS"?',
            'Accepted keys: "DEFAULTS", "DATABASES", "ENGINES", "ENV_PREFIX"'
            + "".join(f', "{key}"' for key in OTHER_KEYS) + ".", "poolkit.E002"),
            id="misspelt-top-level"),
        pytest.param({"defaults": {}}, Problem(
            'POOLKIT["defaults"]', 'unknown key; did you mean "DEFAULTS"?',
            'Accepted keys: "DEFAULTS", "DATABASES", "ENGINES", "ENV_PREFIX"'
            + "".join(f', "{key}"' for key in OTHER_KEYS) + ".", "poolkit.E002"),
            id="lower-case-top-level"),
        pytest.param({"DEFAULTS": {"pool_size": "10"}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_size"]', "must be an integer >= 1 and <= 10000, got '10'",
            "Got the text '10': write 10 without quotes, or, when settings.py reads it from the "
            "environment, wrap it in int(...), or drop the key and set the environment "
            "variable POOLKIT_POOL_SIZE=10 (environment variables and DATABASE_URL parameters "
            "are converted).", "poolkit.E003"), id="quoted-int"),
        pytest.param({"DEFAULTS": {"pool_timeout": "2.5"}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_timeout"]', "must be a number of seconds >= 0.001 and <= "
                                                   "3600, got '2.5'",
            "Got the text '2.5': write 2.5 without quotes, or, when settings.py reads it from "
            "the environment, wrap it in float(...), or drop the key and set the environment "
            "variable POOLKIT_POOL_TIMEOUT=2.5 (environment variables and DATABASE_URL "
            "parameters are converted).", "poolkit.E003"), id="quoted-float"),
        pytest.param({"DEFAULTS": {"pool_size": "ten"}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_size"]', "must be an integer >= 1 and <= 10000, got 'ten'",
            "Connections kept open in the pool (per process).", "poolkit.E003"), id="word-int"),
        pytest.param({"DEFAULTS": {"pool_size": 2.0}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_size"]', "must be an integer >= 1 and <= 10000, got 2.0",
            "Connections kept open in the pool (per process).", "poolkit.E003"), id="float-int"),
        pytest.param({"DEFAULTS": {"pool_size": 0}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_size"]', "must be an integer >= 1 and <= 10000, got 0",
            "Connections kept open in the pool (per process).", "poolkit.E003"), id="size-0"),
        pytest.param({"DEFAULTS": {"pool_size": True}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_size"]', "must be an integer >= 1 and <= 10000, got True",
            "Connections kept open in the pool (per process).", "poolkit.E003"), id="bool-int"),
        pytest.param({"DEFAULTS": {"pool_pre_ping": 1}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_pre_ping"]', "must be True or False, got 1",
            "Test a connection before handing it out, replacing it if the server dropped it.",
            "poolkit.E003"), id="int-bool"),
        pytest.param({"DEFAULTS": {"pool_use_lifo": "yes"}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_use_lifo"]', "must be True or False, got 'yes'",
            "Got the text 'yes': write True without quotes, or drop the key and set the "
            "environment variable POOLKIT_POOL_USE_LIFO=yes (environment variables and "
            "DATABASE_URL parameters are converted).", "poolkit.E003"), id="text-bool"),
        pytest.param({"DATABASES": {"default": {"pool_size": "20"}}}, Problem(
            'POOLKIT["DATABASES"]["default"]["pool_size"]', "must be an integer >= 1 and <= 10000, "
            "got '20'",
            "Got the text '20': write 20 without quotes, or, when settings.py reads it from the "
            "environment, wrap it in int(...), or drop the key and set the environment "
            "variable POOLKIT_DEFAULT__POOL_SIZE=20 (environment variables and DATABASE_URL "
            "parameters are converted).", "poolkit.E003"), id="environ-get-per-alias"),
        pytest.param({"DEFAULTS": {"preset": "production"}}, Problem(
            'POOLKIT["DEFAULTS"]["preset"]', "must be one of \"development\", \"small_api\", "
            "\"high_traffic\", \"background_worker\", or None, got 'production'",
            '"production" is a sizing value: write "sizing": "production".', "poolkit.E003"),
            id="preset-is-a-sizing"),
        pytest.param({"DEFAULTS": {"max_overflow": -5}}, Problem(
            'POOLKIT["DEFAULTS"]["max_overflow"]',
            "must be an integer >= 0 and <= 10000, or -1 for no limit, got -5",
            "Extra connections opened when the pool is exhausted, closed again on checkin.",
            "poolkit.E003"), id="overflow-negative"),
        pytest.param({"DEFAULTS": {"pool_timeout": 0}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_timeout"]', "must be a number of seconds >= 0.001 and <= "
                                                   "3600, got 0",
            "How long a checkout waits for a free connection before PoolTimeout.",
            "poolkit.E003"), id="timeout-0"),
        pytest.param({"DEFAULTS": {"pool_timeout": float("inf")}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_timeout"]', "must be a number of seconds >= 0.001 and <= "
                                                   "3600, got inf",
            "How long a checkout waits for a free connection before PoolTimeout.",
            "poolkit.E003"), id="timeout-inf"),
        pytest.param({"DEFAULTS": {"pool_recycle": 0}}, Problem(
            'POOLKIT["DEFAULTS"]["pool_recycle"]',
            "must be an integer of seconds >= 1 and <= 31536000, or -1 to never recycle, got 0",
            "Connections older than this are replaced at their next checkout.",
            "poolkit.E003"), id="recycle-0"),
        pytest.param({"DEFAULTS": {"connect_timeout": -1}}, Problem(
            'POOLKIT["DEFAULTS"]["connect_timeout"]',
            "must be an integer of seconds >= 0 and <= 3600 (0 waits forever), got -1",
            "libpq's limit on opening a connection.", "poolkit.E003"), id="connect-timeout"),
        pytest.param({"DEFAULTS": {"statement_timeout": 1.5}}, Problem(
            'POOLKIT["DEFAULTS"]["statement_timeout"]',
            "must be an integer of milliseconds >= 0 and <= 2147483647 (0: no limit), or None, "
            "got 1.5",
            "Sent as -c statement_timeout at connect; None leaves the server's value.",
            "poolkit.E003"), id="statement-timeout"),
        pytest.param({"DATABASES": {"default": {"preset": "small-api"}}}, Problem(
            'POOLKIT["DATABASES"]["default"]["preset"]',
            'must be one of "development", "small_api", "high_traffic", "background_worker", '
            "or None, got 'small-api'; did you mean \"small_api\"?",
            "A named size from the preset table: sets pool_size and max_overflow.",
            "poolkit.E003"), id="misspelt-preset"),
        pytest.param({"DEFAULTS": {"sizing": "cpu"}}, Problem(
            'POOLKIT["DEFAULTS"]["sizing"]',
            'must be one of "cores", "async", "production", "auto", or None, got \'cpu\'',
            "Compute pool_size (and, for production/auto, max_overflow) with a sizing formula.",
            "poolkit.E003"), id="unknown-sizing"),
        pytest.param({"DATABASES": {"replica": {}}}, Problem(
            'POOLKIT["DATABASES"]["replica"]', 'unknown database alias; did you mean '
            '"replica1"?', ALIASES_HINT, "poolkit.E004"), id="misspelt-alias"),
        pytest.param({"DATABASES": {"warehouse": {}}}, Problem(
            'POOLKIT["DATABASES"]["warehouse"]', "unknown database alias", ALIASES_HINT,
            "poolkit.E004"), id="unknown-alias"),
        pytest.param({"ENV_PREFIX": ""}, Problem(
            'POOLKIT["ENV_PREFIX"]', "must be a non-empty string or None, got ''",
            'The default is "POOLKIT_"; None turns environment variables off.', "poolkit.E003"),
            id="empty-prefix"),
        pytest.param({"ENV_PREFIX": 5}, Problem(
            'POOLKIT["ENV_PREFIX"]', "must be a non-empty string or None, got 5",
            'The default is "POOLKIT_"; None turns environment variables off.', "poolkit.E003"),
            id="int-prefix"),
        pytest.param({"DATABASES": {"default": {"sizing": "async"}}}, Problem(
            'POOLKIT["DATABASES"]["default"]',
            'sizing "async" needs "concurrency" (expected concurrent requests)',
            'Set "concurrency", or pick another sizing formula.', "poolkit.E005"),
            id="async-without-concurrency"),
    ],
)
def test_problem_text(poolkit: Any, expected: Problem) -> None:
    assert problems_of(poolkit) == [expected]


def test_every_problem_is_listed_not_just_the_first() -> None:
    problems = problems_of({
        "DEFALTS": {},
        "DEFAULTS": {"pool_size": 0, "max_overflow": -5},
        "DATABASES": {"default": {"pool_sise": 1}, "replca": {"pool_timeout": 0}},
    }, environ={"POOLKIT_POOL_SIZ": "3"})
    assert [(problem.path, problem.check_id) for problem in problems] == [
        ('POOLKIT["DEFALTS"]', "poolkit.E002"),
        ('POOLKIT["DEFAULTS"]["pool_size"]', "poolkit.E003"),
        ('POOLKIT["DEFAULTS"]["max_overflow"]', "poolkit.E003"),
        ('POOLKIT["DATABASES"]["replca"]', "poolkit.E004"),
        # An unknown alias's own keys are still checked.
        ('POOLKIT["DATABASES"]["replca"]["pool_timeout"]', "poolkit.E003"),
        ("environment variable POOLKIT_POOL_SIZ", "poolkit.E006"),
        ('POOLKIT["DATABASES"]["default"]["pool_sise"]', "poolkit.E002"),
    ]


def test_the_exception_lists_every_problem() -> None:
    problems = problems_of({"DEFAULTS": {"max_overflow": -5},
                            "DATABASES": {"default": {"pool_sise": 10}}})
    error = PoolkitConfigurationError(problems)
    assert isinstance(error, ImproperlyConfigured)
    assert error.problems == tuple(problems)
    text = str(error)
    assert text.startswith("2 problems in the poolkit configuration:\n  - ")
    assert ('POOLKIT["DEFAULTS"]["max_overflow"]: must be an integer >= 0 and <= 10000, or -1 '
            "for no limit, got -5. Extra connections opened") in text
    assert 'POOLKIT["DATABASES"]["default"]["pool_sise"]: unknown key; did you mean "pool_size"?' \
        in text


def test_a_single_problem_is_the_whole_message() -> None:
    error = PoolkitConfigurationError(problems_of({"DEFAULTS": {"pool_timeout": 0}}))
    assert str(error) == (
        'POOLKIT["DEFAULTS"]["pool_timeout"]: must be a number of seconds >= 0.001 and <= 3600, '
        "got 0. "
        "How long a checkout waits for a free connection before PoolTimeout.")


def test_problems_reported_by_other_sections_reach_the_same_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A feature's section (registered in SECTION_PARSERS) is a valid top-level key, and its
    parser's problems join poolkit's own."""
    monkeypatch.setitem(conf.SECTION_PARSERS, "EXAMPLE", f"{__name__}.parse_example_section")
    built = build({"EXAMPLE": {"ok": True}})
    assert built.sections["EXAMPLE"] == {"ok": True}
    assert problems_of({"EXAMPLE": {"ok": False}, "EXAMPL": 1}) == [
        Problem('POOLKIT["EXAMPL"]', 'unknown key; did you mean "EXAMPLE"?',
                'Accepted keys: "DEFAULTS", "DATABASES", "ENGINES", "ENV_PREFIX"'
                + "".join(f', "{key}"' for key in OTHER_KEYS) + ', "EXAMPLE".',
                "poolkit.E002"),
        Problem('POOLKIT["EXAMPLE"]["ok"]', "must be True", "Set it to True.", "poolkit.E999"),
    ]


def parse_example_section(value: Any, databases: Any, report: Any) -> Any:
    """A section parser for the test above."""
    if value and not value.get("ok"):
        report('POOLKIT["EXAMPLE"]["ok"]', "must be True", "Set it to True.", "poolkit.E999")
    return value


def test_pool_settings_repr_shows_no_url() -> None:
    pool = replace(build({}).pools["default"], url=f"postgresql://u:{SENTINEL}@h/db")
    assert repr(pool) == "<PoolSettings 'default' size=5 overflow=10>"


# get_settings(): first use, not import or ready()


@pytest.mark.usefixtures("no_poolkit_env")
def test_get_settings_raises_at_first_use() -> None:
    with override_settings(POOLKIT={"DEFAULTS": {"max_overflow": -5},
                                    "DATABASES": {"default": {"pool_sise": 10}}}):
        with pytest.raises(PoolkitConfigurationError) as raised:
            get_settings()
        assert [problem.check_id for problem in raised.value.problems] == [
            "poolkit.E003", "poolkit.E002"]
        with pytest.raises(PoolkitConfigurationError, match=r"pool_sise"):
            get_engine()


def _run_django(code: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("POOLKIT_")}
    environ["DJANGO_SETTINGS_MODULE"] = "tests.settings_broken"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
        timeout=60, check=False)


def test_django_setup_with_a_broken_poolkit_does_not_raise() -> None:
    """Import and ``ready()`` never read POOLKIT: only the first get_engine() does."""
    result = _run_django(
        "import django; django.setup(); import django_poolkit; print('set up'); "
        "from django_poolkit import get_engine; get_engine()")
    assert result.stdout == "set up\n"
    assert result.returncode == 1
    assert "\ndjango_poolkit.PoolkitConfigurationError: 3 problems in the poolkit " \
        "configuration:\n" in result.stderr
    assert 'POOLKIT["DATABASES"]["default"]["pool_sise"]: unknown key' in result.stderr
    assert SENTINEL not in result.stderr


# Reload


@pytest.mark.usefixtures("no_poolkit_env")
def test_override_settings_reloads_and_restores() -> None:
    before = get_settings()
    assert get_settings() is before  # cached
    with override_settings(POOLKIT={"DEFAULTS": {"pool_size": 7}}):
        assert get_settings().pools["default"].pool_size == 7
        with override_settings(POOLKIT={"DEFAULTS": {"pool_size": 0}}):
            with pytest.raises(PoolkitConfigurationError):
                get_settings()
        assert get_settings().pools["default"].pool_size == 7
    assert get_settings() == before


@pytest.mark.usefixtures("no_poolkit_env")
def test_reload_picks_up_changed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = get_settings().pools["default"].pool_timeout
    assert before != 3
    monkeypatch.setenv("POOLKIT_POOL_TIMEOUT", "3")
    assert get_settings().pools["default"].pool_timeout == before  # read once per build
    reload()
    assert get_settings().pools["default"].pool_timeout == 3
    assert get_settings().pools["default"].origins["pool_timeout"] == "environment"
    monkeypatch.setenv("POOLKIT_POOL_TIMEOUT", "0")
    reload()
    with pytest.raises(PoolkitConfigurationError, match="POOLKIT_POOL_TIMEOUT"):
        get_settings()


def test_a_misspelt_database_url_parameter_gets_a_did_you_mean() -> None:
    import environ

    config = environ.Env.db_url_config(
        "postgres://app@db:5432/app?pool_sise=20&sslmode=require&connect_timeout=3")
    config["ENGINE"] = "django_poolkit.db.backends.postgresql"
    problems = problems_of({}, {"default": config})
    assert [(p.path, p.message, p.check_id) for p in problems] == [(
        'DATABASES["default"]["OPTIONS"]["pool_sise"]',
        'is neither a pool parameter nor a PostgreSQL connection parameter; did you mean '
        '"pool_size"?', "poolkit.E002")]
    # libpq's own parameters and Django's options are not pool parameters, and pass.
    ok = {**config, "OPTIONS": {"sslmode": "require", "isolation_level": 1,
                                "server_side_binding": False, "options": "-c x=1",
                                "prepare_threshold": None}}
    assert "default" in build({}, {"default": ok}).pools


def test_pool_parameters_on_an_alias_of_the_stock_backend_are_an_error() -> None:
    import environ

    config = environ.Env.db_url_config("postgres://app@db:5432/app?pool_size=20")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    problems = problems_of({}, {"default": config})
    assert [(p.path, p.check_id) for p in problems] == [
        ('DATABASES["default"]["OPTIONS"]["pool_size"]', "poolkit.E005")]
    assert "uses ENGINE 'django.db.backends.postgresql'" in problems[0].message
    assert 'Set ENGINE to "django_poolkit.db.backends.postgresql"' in problems[0].hint


def test_an_empty_url_parameter_is_an_error_as_an_empty_variable_is() -> None:
    """django-environ drops ``?pool_size=`` before OPTIONS, where ``POOLKIT_POOL_SIZE=`` is
    an error: the URL variable that points at the alias is read for it."""
    _, from_env = build_settings({}, DATABASES, {"POOLKIT_DEFAULT__POOL_SIZE": ""})
    assert [(problem.path, problem.check_id) for problem in from_env] == [
        ("environment variable POOLKIT_DEFAULT__POOL_SIZE", "poolkit.E006")]
    database = {**DATABASES["default"], "HOST": "db", "PORT": "6543"}
    url = "postgres://u:s3cret@db:6543/app?pool_size=&sslmode=require&pool_timeout= "
    _, from_url = build_settings({}, {"default": database}, {"DATABASE_URL": url})
    assert from_url == [
        Problem("environment variable DATABASE_URL: ?pool_size=",
                'is empty (for DATABASES["default"])',
                "Remove the parameter to keep the value configured elsewhere, or give one: "
                f"{KNOBS['pool_size'].accepted}.", "poolkit.E003"),
        Problem("environment variable DATABASE_URL: ?pool_timeout=",
                'is empty (for DATABASES["default"])',
                "Remove the parameter to keep the value configured elsewhere, or give one: "
                f"{KNOBS['pool_timeout'].accepted}.", "poolkit.E003")]
    assert "s3cret" not in repr(from_url)
    # A URL of another database is not this alias's.
    other = url.replace("/app?", "/other?")
    assert build_settings({}, {"default": database}, {"OTHER_URL": other})[1] == []
