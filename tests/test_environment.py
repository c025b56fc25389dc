"""Pool settings from ``POOLKIT_*`` environment variables and ``DATABASE_URL`` parameters.

Both are text, so both are parsed (strictly: a typo is an error, never a silent default);
``POOLKIT`` itself takes Python values only. The environment is passed to build_settings
explicitly, so these tests never depend on the caller's shell.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from django_poolkit.conf import KNOBS, PoolSettings, build_settings, get_settings, reload
from django_poolkit.exceptions import Problem

SENTINEL = "s3ntinel-PW-9f2"
DATABASES: dict[str, dict[str, Any]] = {
    "default": {"ENGINE": "django_poolkit.db.backends.postgresql", "NAME": "app", "OPTIONS": {}},
    "replica-eu": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"},
}
SETTINGS_LIST = ", ".join(name.upper() for name in KNOBS)
ALIAS_HINT = ("Per-alias variables are named POOLKIT_<ALIAS>__<SETTING>, e.g. "
              "POOLKIT_DEFAULT__POOL_SIZE.")


def pools(environ: dict[str, str], poolkit: Any = None,
          databases: dict[str, dict[str, Any]] | None = None) -> dict[str, PoolSettings]:
    built, problems = build_settings(poolkit, databases or DATABASES, environ)
    assert problems == []
    assert built is not None
    return dict(built.pools)


def problems_of(environ: dict[str, str], poolkit: Any = None,
                databases: dict[str, dict[str, Any]] | None = None) -> list[Problem]:
    built, problems = build_settings(poolkit, databases or DATABASES, environ)
    assert built is None
    return problems


@pytest.mark.parametrize(
    ("variable", "text", "expected"),
    [
        ("POOL_SIZE", "12", 12),
        ("POOL_SIZE", " 12 ", 12),
        ("MAX_OVERFLOW", "-1", -1),
        ("MAX_OVERFLOW", "0", 0),
        ("POOL_TIMEOUT", "2.5", 2.5),
        ("POOL_TIMEOUT", "7", 7.0),
        ("POOL_RECYCLE", "-1", -1),
        ("POOL_PRE_PING", "false", False),
        ("POOL_PRE_PING", "False", False),
        ("POOL_PRE_PING", "no", False),
        ("POOL_PRE_PING", "off", False),
        ("POOL_PRE_PING", "0", False),
        ("POOL_USE_LIFO", "TRUE", True),
        ("POOL_USE_LIFO", "yes", True),
        ("POOL_USE_LIFO", "on", True),
        ("POOL_USE_LIFO", "1", True),
        ("CONNECT_TIMEOUT", "0", 0),
        ("STATEMENT_TIMEOUT", "5000", 5000),
        ("STATEMENT_TIMEOUT", "none", None),
        ("APPLICATION_NAME", "web:{alias}", "web:{alias}"),
        ("PRESET", "high_traffic", "high_traffic"),
        ("QUERIES_PER_REQUEST", "2.5", 2.5),
        ("ENVIRONMENT", "production", "production"),
        ("ENVIRONMENT", " production\n", "production"),
    ],
)
def test_global_variables_are_parsed(variable: str, text: str, expected: Any) -> None:
    found = pools({f"POOLKIT_{variable}": text})
    name = variable.lower()
    for pool in found.values():
        assert getattr(pool, name) == expected
        assert type(getattr(pool, name)) is type(expected)
        assert pool.origins[name] == "environment"


def test_per_alias_variables_beat_global_ones_and_stay_with_their_alias() -> None:
    """Alias names become upper case with non-alphanumerics as ``_``: replica-eu ->
    REPLICA_EU."""
    found = pools({"POOLKIT_POOL_SIZE": "7", "POOLKIT_REPLICA_EU__POOL_SIZE": "20",
                   "POOLKIT_REPLICA_EU__SIZING": "cores", "POOLKIT_REPLICA_EU__CORES": "2",
                   "POOLKIT_REPLICA_EU__SPINDLES": "1"})
    assert found["default"].pool_size == 7
    # The explicit size in the same layer as the formula wins over it.
    assert (found["replica-eu"].pool_size, found["replica-eu"].sizing) == (20, "cores")
    assert found["replica-eu"].origins["pool_size"] == "environment"
    found = pools({"POOLKIT_REPLICA_EU__SIZING": "cores", "POOLKIT_REPLICA_EU__CORES": "2",
                   "POOLKIT_REPLICA_EU__SPINDLES": "1"})
    assert found["replica-eu"].pool_size == 5
    assert found["replica-eu"].origins["pool_size"] == "sizing:cores"


def test_unrelated_variables_are_ignored() -> None:
    found = pools({"PATH": "/bin", "POOLKITX_POOL_SIZE": "x", "MY_POOLKIT_POOL_SIZE": "x",
                   "ENV": "production"})
    assert found["default"].pool_size == 5


def test_a_custom_prefix_replaces_poolkit() -> None:
    found = pools({"MYAPP_POOL_POOL_SIZE": "9", "POOLKIT_POOL_SIZE": "ten"},
                  {"ENV_PREFIX": "MYAPP_POOL_"})
    assert found["default"].pool_size == 9


def test_env_prefix_none_turns_environment_variables_off() -> None:
    built, problems = build_settings(
        {"ENV_PREFIX": None}, DATABASES,
        {"POOLKIT_POOL_SIZE": "ten", "POOLKIT_POOL_SIZ": "3", "POOLKIT_NOPE__POOL_SIZE": "3"})
    assert problems == []
    assert built is not None
    assert built.env_prefix is None
    assert built.pools["default"].pool_size == 5
    assert built.pools["default"].origins["pool_size"] == "default"


def test_engine_variables_include_the_url() -> None:
    url = f"postgresql://reporter:{SENTINEL}@warehouse/stats"
    found = pools({"POOLKIT_STATS_DB__URL": url, "POOLKIT_STATS_DB__PRESET": "small_api"},
                  {"ENGINES": {"stats-db": {}}})
    assert (found["stats-db"].url, found["stats-db"].pool_size) == (url, 10)
    assert SENTINEL not in repr(found["stats-db"])


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({"POOLKIT_POOL_SIZ": "3"}, Problem(
            "environment variable POOLKIT_POOL_SIZ",
            'unknown setting "POOL_SIZ"; did you mean "POOLKIT_POOL_SIZE"?',
            f"Variables are POOLKIT_<SETTING> or POOLKIT_<ALIAS>__<SETTING> with SETTING one of "
            f"{SETTINGS_LIST}.", "poolkit.E006"), id="misspelt-setting"),
        pytest.param({"POOLKIT_DEFAULT__MAX_OVERFLOWS": "3"}, Problem(
            "environment variable POOLKIT_DEFAULT__MAX_OVERFLOWS",
            'unknown setting "MAX_OVERFLOWS"; did you mean "POOLKIT_DEFAULT__MAX_OVERFLOW"?',
            f"Variables are POOLKIT_<SETTING> or POOLKIT_<ALIAS>__<SETTING> with SETTING one of "
            f"{SETTINGS_LIST}.", "poolkit.E006"), id="misspelt-alias-setting"),
        pytest.param({"POOLKIT_HOME": "/opt"}, Problem(
            "environment variable POOLKIT_HOME", 'unknown setting "HOME"',
            f"Variables are POOLKIT_<SETTING> or POOLKIT_<ALIAS>__<SETTING> with SETTING one of "
            f"{SETTINGS_LIST}.", "poolkit.E006"), id="unknown-setting"),
        pytest.param({"POOLKIT_REPLICA_UE__POOL_SIZE": "3"}, Problem(
            "environment variable POOLKIT_REPLICA_UE__POOL_SIZE",
            'names no database or engine "REPLICA_UE"; did you mean '
            '"POOLKIT_REPLICA_EU__POOL_SIZE"?', ALIAS_HINT, "poolkit.E006"),
            id="misspelt-alias"),
        pytest.param({"POOLKIT_WAREHOUSE__POOL_SIZE": "3"}, Problem(
            "environment variable POOLKIT_WAREHOUSE__POOL_SIZE",
            'names no database or engine "WAREHOUSE"', ALIAS_HINT, "poolkit.E006"),
            id="unknown-alias"),
        pytest.param({"POOLKIT_POOL_SIZE": "ten"}, Problem(
            "environment variable POOLKIT_POOL_SIZE", "must be an integer >= 1 and <= 10000, "
                                                      "got 'ten'",
            "Connections kept open in the pool (per process).", "poolkit.E006"), id="ten"),
        pytest.param({"POOLKIT_POOL_SIZE": "2.0"}, Problem(
            "environment variable POOLKIT_POOL_SIZE", "must be an integer >= 1 and <= 10000, "
                                                      "got '2.0'",
            "Connections kept open in the pool (per process).", "poolkit.E006"), id="float"),
        pytest.param({"POOLKIT_POOL_SIZE": "none"}, Problem(
            "environment variable POOLKIT_POOL_SIZE", "must be an integer >= 1 and <= 10000, "
                                                      "got None",
            "Connections kept open in the pool (per process).", "poolkit.E006"), id="none"),
        pytest.param({"POOLKIT_MAX_OVERFLOW": "-5"}, Problem(
            "environment variable POOLKIT_MAX_OVERFLOW",
            "must be an integer >= 0 and <= 10000, or -1 for no limit, got -5",
            "Extra connections opened when the pool is exhausted, closed again on checkin.",
            "poolkit.E006"), id="out-of-range"),
        pytest.param({"POOLKIT_POOL_TIMEOUT": "5s"}, Problem(
            "environment variable POOLKIT_POOL_TIMEOUT",
            "must be a number of seconds >= 0.001 and <= 3600, got '5s'",
            "How long a checkout waits for a free connection before PoolTimeout.",
            "poolkit.E006"), id="unit-suffix"),
        pytest.param({"POOLKIT_POOL_TIMEOUT": "nan"}, Problem(
            "environment variable POOLKIT_POOL_TIMEOUT",
            "must be a number of seconds >= 0.001 and <= 3600, got 'nan'",
            "How long a checkout waits for a free connection before PoolTimeout.",
            "poolkit.E006"), id="nan"),
        pytest.param({"POOLKIT_POOL_PRE_PING": "maybe"}, Problem(
            "environment variable POOLKIT_POOL_PRE_PING", "must be True or False, got 'maybe'",
            "Write true or false (yes/no, on/off and 1/0 work too).", "poolkit.E006"),
            id="bool-word"),
        pytest.param({"POOLKIT_POOL_PRE_PING": "2"}, Problem(
            "environment variable POOLKIT_POOL_PRE_PING", "must be True or False, got '2'",
            "Write true or false (yes/no, on/off and 1/0 work too).", "poolkit.E006"),
            id="bool-2"),
        pytest.param({"POOLKIT_DEFAULT__PRESET": "smallapi"}, Problem(
            "environment variable POOLKIT_DEFAULT__PRESET",
            'must be one of "development", "small_api", "high_traffic", "background_worker", '
            "or None, got 'smallapi'; did you mean \"small_api\"?",
            "A named size from the preset table: sets pool_size and max_overflow.",
            "poolkit.E006"), id="misspelt-preset"),
        pytest.param({"POOLKIT_PRESET": "SMALL_API"}, Problem(
            "environment variable POOLKIT_PRESET",
            'must be one of "development", "small_api", "high_traffic", "background_worker", '
            "or None, got 'SMALL_API'; did you mean \"small_api\"?",
            "A named size from the preset table: sets pool_size and max_overflow.",
            "poolkit.E006"), id="upper-case-preset"),
        pytest.param({"POOLKIT_DEFAULT__URL": f"postgresql://u:{SENTINEL}@elsewhere/db"},
                     Problem(
            "environment variable POOLKIT_DEFAULT__URL",
            'sets a url, but "default" is a DATABASES alias',
            'Its connection comes from settings.DATABASES["default"] (e.g. DATABASE_URL); '
            'only POOLKIT["ENGINES"] entries take a url.', "poolkit.E006"),
            id="url-for-a-database-alias"),
        pytest.param({"POOLKIT_URL": f"postgresql://u:{SENTINEL}@elsewhere/db"}, Problem(
            "environment variable POOLKIT_URL", 'unknown setting "URL"',
            f"Variables are POOLKIT_<SETTING> or POOLKIT_<ALIAS>__<SETTING> with SETTING one of "
            f"{SETTINGS_LIST}.", "poolkit.E006"), id="global-url"),
        pytest.param({"POOLKIT_SIZING": "async"}, Problem(
            'POOLKIT["DATABASES"]["default"]',
            'sizing "async" needs "concurrency" (expected concurrent requests)',
            'Set "concurrency", or pick another sizing formula.', "poolkit.E005"),
            id="async-without-concurrency"),
    ],
)
def test_environment_problem_text(environ: dict[str, str], expected: Problem) -> None:
    databases = {"default": DATABASES["default"]} if expected.check_id == "poolkit.E005" else None
    assert problems_of(environ, databases=databases) == [expected]
    assert all(SENTINEL not in text for text in (expected.path, expected.message, expected.hint))


def test_a_variable_naming_two_aliases_is_ambiguous() -> None:
    databases = {**DATABASES, "replica_eu": DATABASES["replica-eu"]}
    assert problems_of({"POOLKIT_REPLICA_EU__POOL_SIZE": "3"}, databases=databases) == [Problem(
        "environment variable POOLKIT_REPLICA_EU__POOL_SIZE",
        'is ambiguous: REPLICA_EU stands for "replica-eu" and "replica_eu"',
        'Set this per alias in POOLKIT["DATABASES"] or POOLKIT["ENGINES"] instead, or rename '
        "one of them.", "poolkit.E006")]
    # Without such a variable, the two aliases are fine.
    assert set(pools({"POOLKIT_DEFAULT__POOL_SIZE": "3"}, databases=databases)) == {
        "default", "replica-eu", "replica_eu"}


def test_an_engine_variable_for_a_misspelt_url_key() -> None:
    problems = problems_of({"POOLKIT_STATS__URI": f"postgresql://u:{SENTINEL}@h/db"},
                           {"ENGINES": {"stats": {"url": "postgresql://u@h/db"}}})
    assert [(problem.path, problem.message) for problem in problems] == [(
        "environment variable POOLKIT_STATS__URI",
        'unknown setting "URI"; did you mean "POOLKIT_STATS__URL"?')]
    assert SENTINEL not in str(problems)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"pool_size": "ten"}, Problem(
            'DATABASES["default"]["OPTIONS"]["pool_size"]', "must be an integer >= 1 and <= "
                                                            "10000, got 'ten'",
            "Connections kept open in the pool (per process).", "poolkit.E003")),
        ({"pool_pre_ping": "sometimes"}, Problem(
            'DATABASES["default"]["OPTIONS"]["pool_pre_ping"]',
            "must be True or False, got 'sometimes'",
            "Write true or false (yes/no, on/off and 1/0 work too).", "poolkit.E003")),
        ({"max_overflow": "-5"}, Problem(  # django-environ leaves "-5" as text
            'DATABASES["default"]["OPTIONS"]["max_overflow"]',
            "must be an integer >= 0 and <= 10000, or -1 for no limit, got -5",
            "Extra connections opened when the pool is exhausted, closed again on checkin.",
            "poolkit.E003")),
    ],
)
def test_url_option_problem_text(options: dict[str, Any], expected: Problem) -> None:
    databases = {"default": {**DATABASES["default"], "OPTIONS": options}}
    assert problems_of({}, databases=databases) == [expected]


@pytest.mark.parametrize(("text", "expected"), [("1", True), (1, True), ("0", False),
                                                (0, False), ("true", True), (True, True)])
def test_url_booleans_arrive_as_text_ints_or_bools(text: Any, expected: bool) -> None:
    """django-environ turns ``?pool_pre_ping=1`` into the int 1; a hand-written OPTIONS
    may hold a real bool."""
    databases = {"default": {**DATABASES["default"], "OPTIONS": {"pool_pre_ping": text}}}
    assert pools({}, databases=databases)["default"].pool_pre_ping is expected


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("POOLKIT_", "MYAPP_")) or name == "ENV":
            monkeypatch.delenv(name)
    reload()


@pytest.mark.usefixtures("clean_environment")
def test_get_settings_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLKIT_DEFAULT__MAX_OVERFLOW", "3")
    monkeypatch.setenv("MYAPP_POOL_SIZE", "4")
    monkeypatch.setenv("ENV", "production")
    reload()
    assert get_settings().pools["default"].max_overflow == 3
    with override_settings(POOLKIT={"ENV_PREFIX": "MYAPP_", "DEFAULTS": {"sizing": "auto",
                                                                          "cores": 2}}):
        pool = get_settings().pools["default"]
        assert (pool.pool_size, pool.max_overflow) == (4, 8)  # $ENV=production: 2*2+4
        assert pool.origins["pool_size"] == "environment"
        assert pool.origins["max_overflow"] == "sizing:auto"
    assert get_settings().pools["default"].max_overflow == 3
