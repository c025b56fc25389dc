"""A table of bad inputs, each with the outcome it must get (issue 14).

Kinds: settings (``POOLKIT``), environment variables, URLs (``DATABASE_URL`` options and
``ENGINES`` urls), command arguments, and HTTP headers and cookies. A refused input must be
refused by a ``poolkit.E0xx`` problem naming its key path (or variable), the value (never for
a secret) and what is accepted; a command argument by a usage error (exit status 2) with the
accepted range; an HTTP input by the status and body an anonymous caller gets, never a 500.
Rows marked ``ACCEPTED`` are accepted on purpose; their ``why`` says why.

``test_the_table_counts`` prints the counts the issue's closing note reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import environ
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import include, path

from django_poolkit import conf, pinning

from .helpers.health import TOKEN, poolkit

pytestmark = pytest.mark.postgres

urlpatterns = [
    path("health/", include("django_poolkit.urls")),
    path("metrics/", include("django_poolkit.metrics")),
]

ACCEPTED = "accepted"

PG = "django_poolkit.db.backends.postgresql"
DATABASES: dict[str, dict[str, Any]] = {
    "default": {"ENGINE": PG, "NAME": "app", "HOST": "127.0.0.1", "PORT": "5432",
                "USER": "app", "PASSWORD": "", "OPTIONS": {}},
    "replica": {"ENGINE": PG, "NAME": "app", "HOST": "127.0.0.1", "PORT": "5433",
                "USER": "app", "PASSWORD": "", "OPTIONS": {}, "TEST": {"MIRROR": "default"}},
}


@dataclass(frozen=True)
class Row:
    """One input and its outcome: ``check_id`` and ``path`` of the problem it must raise (and
    ``shows``, a text the message must hold: the value as given), or ACCEPTED with ``why``."""

    id: str
    value: Any
    check_id: str
    path: str = ""
    shows: str | None = None
    why: str = ""


def refused(id: str, value: Any, check_id: str, path: str, shows: str | None = "") -> Row:
    """``shows=""`` means: the message shows ``repr(value)``; None: a secret, never shown."""
    return Row(id, value, check_id, path, repr(value) if shows == "" else shows)


def accepted(id: str, value: Any, why: str) -> Row:
    return Row(id, value, ACCEPTED, why=why)


# -- settings ---------------------------------------------------------------------------------

R = 'POOLKIT["ROUTING"]'
H = 'POOLKIT["HEALTH"]'
D = 'POOLKIT["DEFAULTS"]'
DEP = 'POOLKIT["DEPLOYMENT"]'


def routing(**options: Any) -> dict[str, Any]:
    return {"ROUTING": {"CLUSTERS": {"main": {"primary": "default", "replicas": ["replica"]}},
                        "probe_interval": None, **options}}


def weighted(weight: Any) -> dict[str, Any]:
    cluster = {"primary": "default", "strategy": "weighted",
               "replicas": {"replica": {"weight": weight}}}
    return {"ROUTING": {"probe_interval": None, "CLUSTERS": {"main": cluster}}}


def health(**options: Any) -> dict[str, Any]:
    return {"HEALTH": options}


def defaults(**knobs: Any) -> dict[str, Any]:
    return {"DEFAULTS": knobs}


def deployment(**options: Any) -> dict[str, Any]:
    return {"DEPLOYMENT": options}


SECRET = "x" * 40  # stands for settings.SECRET_KEY in the row that reuses it (see below)

SETTINGS_ROWS: list[tuple[Row, dict[str, Any]]] = [
    # ROUTING, per process
    *[(refused(f"pin_seconds={v!r}", v, "poolkit.E022", f'{R}["pin_seconds"]'),
       routing(pin_seconds=v))
      for v in (math.inf, math.nan, 1e15, 0.5, 0, -1, "15", True)],
    (accepted("pin_seconds=1", 1, "the signed timestamp's granularity: the shortest window "
              "that holds"), routing(pin_seconds=1)),
    *[(refused(f"probe_interval={v!r}", v, "poolkit.E022", f'{R}["probe_interval"]'),
       routing(probe_interval=v)) for v in (math.inf, math.nan, 1e-6, 0, -1, 1e9)],
    (accepted("probe_interval=None", None, "documented: probe only on demand"),
     routing(probe_interval=None)),
    *[(refused(f"probe_timeout={v!r}", v, "poolkit.E022", f'{R}["probe_timeout"]'),
       routing(probe_timeout=v)) for v in (math.inf, math.nan, 0, -2, 1e6)],
    *[(refused(f"max_lag={v!r}", v, "poolkit.E022", f'{R}["max_lag"]'), routing(max_lag=v))
      for v in (math.inf, math.nan, 0, -5)],
    (refused("readmit_lag=nan", math.nan, "poolkit.E022", f'{R}["readmit_lag"]'),
     routing(readmit_lag=math.nan)),
    *[(refused(f"max_lag_bytes={v!r}", v, "poolkit.E022", f'{R}["max_lag_bytes"]'),
       routing(max_lag_bytes=v)) for v in (-1, 1.5, True)],
    *[(refused(f"cookie_name={v!r}", v, "poolkit.E022", f'{R}["cookie_name"]'),
       routing(cookie_name=v))
      for v in ("pin;x", "my pin", "", "pin\r\nSet-Cookie: a=b", "pin=1", "pin\u00e9", '"pin"',
                "pin,x", 7)],
    (accepted("cookie_name=__Host-pin", "__Host-pin", "a valid cookie token; the prefix is the "
              "browser's business"), routing(cookie_name="__Host-pin")),
    *[(refused(f"header_name={v!r}", v, "poolkit.E022", f'{R}["header_name"]'),
       routing(header_name=v))
      for v in ("X-Pin\r\nSet-Cookie: a=b", "X Pin", "", "X:Pin", "X-Pin\n", "X-P\u00efn")],
    (accepted("header_name=None", None, "documented: no header, the cookie only"),
     routing(header_name=None)),
    (refused("cookie_samesite=lax", "lax", "poolkit.E022", f'{R}["cookie_samesite"]'),
     routing(cookie_samesite="lax")),
    (refused("cookie_secure=yes", "yes", "poolkit.E022", f'{R}["cookie_secure"]'),
     routing(cookie_secure="yes")),
    (refused("pin_mode=sometimes", "sometimes", "poolkit.E022", f'{R}["pin_mode"]'),
     routing(pin_mode="sometimes")),
    (refused("sticky=1", 1, "poolkit.E022", f'{R}["sticky"]'), routing(sticky=1)),
    (refused("strategy=fastest", "fastest", "poolkit.E022", f'{R}["strategy"]'),
     routing(strategy="fastest")),
    (refused("fallback=replica", "replica", "poolkit.E022", f'{R}["fallback"]'),
     routing(fallback="replica")),
    *[(refused(f"weight={v!r}", v, "poolkit.E022",
               f'{R}["CLUSTERS"]["main"]["replicas"]["replica"]["weight"]'), weighted(v))
      for v in (math.inf, math.nan, 0, -1, 1e300, "2")],
    # HEALTH
    *[(refused(f"timeout={v!r}", v, "poolkit.E032", f'{H}["timeout"]'), health(timeout=v))
      for v in (math.inf, math.nan, 0, 31, -1, "1", 1e-300, 0.0009)],
    (accepted("timeout=0.001", 0.001, "the 1 ms floor of every wait"), health(timeout=0.001)),
    *[(refused(f"cache_ttl={v!r}", v, "poolkit.E032", f'{H}["cache_ttl"]'), health(cache_ttl=v))
      for v in (1e300, math.inf, math.nan, -1, 86_401)],
    (accepted("cache_ttl=0", 0, "documented: no cache, every request probes"),
     health(cache_ttl=0)),
    *[(refused(f"token={label}", v, "poolkit.E032", f'{H}["token"]', None), health(token=v))
      for label, v in (("short", "short"), ("blank", " " * 20), ("non-latin-1", "\u1e9e" * 20),
                       ("int", 1234567890123456789), ("tab-padded", "\t" * 16),
                       ("newline", "a" * 16 + "\n"))],
    (accepted("token=16 chars", "t" * 16, "the documented minimum length"),
     health(token="t" * 16)),
    *[(refused(f"token_header={v!r}", v, "poolkit.E032", f'{H}["token_header"]'),
       health(token_header=v))
      for v in ("X-Token\r\nX-Evil: 1", "", "X Token", "X:Token", "X-T\u00f6ken")],
    *[(refused(f"databases={v!r}", v, "poolkit.E032", f'{H}["databases"]'),
       health(databases=v)) for v in ([], (), "default")],
    (refused("databases=[nope]", ["nope"], "poolkit.E033", f'{H}["databases"]', "nope"),
     health(databases=["nope"])),
    *[(refused(f"min_replicas={v!r}", v, "poolkit.E032", f'{H}["min_replicas"]'),
       health(min_replicas=v)) for v in (-1, 1.5, True, 10_001)],
    *[(refused(f"max_replica_lag={v!r}", v, "poolkit.E032", f'{H}["max_replica_lag"]'),
       health(max_replica_lag=v)) for v in (math.inf, 0, math.nan)],
    *[(refused(f"saturation={v!r}", v, "poolkit.E032", f'{H}["saturation"]'),
       health(saturation=v)) for v in (0, 1.5, math.nan, math.inf)],
    (refused("saturated_status=bad", "bad", "poolkit.E032", f'{H}["saturated_status"]'),
     health(saturated_status="bad")),
    (refused("staff_details=yes", "yes", "poolkit.E032", f'{H}["staff_details"]'),
     health(staff_details="yes")),
    (refused("primary=nope", "nope", "poolkit.E033", f'{H}["primary"]', "nope"),
     health(primary="nope")),
    # DEFAULTS (every pool knob)
    *[(refused(f"{knob}={v!r}", v, "poolkit.E003", f'{D}["{knob}"]'), defaults(**{knob: v}))
      for knob, v in (
          ("pool_size", 0), ("pool_size", -1), ("pool_size", 1.5), ("pool_size", True),
          ("pool_size", 100_001), ("max_overflow", -2), ("max_overflow", 100_001),
          ("pool_timeout", math.inf), ("pool_timeout", math.nan), ("pool_timeout", 1e10),
          ("pool_timeout", 0), ("pool_recycle", 0), ("pool_recycle", 10**12),
          ("pool_pre_ping", "yes"), ("connect_timeout", -1), ("connect_timeout", 10**9),
          ("statement_timeout", 2**31), ("statement_timeout", -1), ("statement_timeout", 1.5),
          ("application_name", "app{"), ("application_name", "app{x}"),
          ("application_name", "}"), ("application_name", "{alias!r}"),
          ("application_name", "{0}"), ("application_name", ""),
          ("leak_detection_threshold", math.inf), ("leak_detection_threshold", 0),
          ("client_timeout", math.nan), ("client_timeout", 1e12),
          # Below the 1 ms floor: "> 0" passed them, then every checkout or query failed.
          ("pool_timeout", 1e-300), ("pool_timeout", 0.0009), ("client_timeout", 1e-9),
          ("leak_detection_threshold", 1e-320), ("leak_detection_threshold", 0.0001),
          ("queries_per_request", 1e-320), ("queries_per_request", math.inf),
          ("cores", 0), ("cores", 10**7), ("spindles", -1), ("concurrency", 0),
          ("async_pool_size", 0), ("reset_on_return", "commit"), ("pre_ping_mode", "tcp"),
          ("pgbouncer", "statement"), ("preset", "huge"))],
    (accepted("application_name={{braces}}", "{{x}}-{alias}",
              "braces written as {{ }} are literal text, as in str.format"),
     defaults(application_name="{{x}}-{alias}")),
    (accepted("statement_timeout=0", 0, "documented: 0 is PostgreSQL's 'no limit'"),
     defaults(statement_timeout=0)),
    (accepted("max_overflow=-1", -1, "documented: no limit on overflow"),
     defaults(max_overflow=-1)),
    (accepted("pool_recycle=-1", -1, "documented: never recycle"), defaults(pool_recycle=-1)),
    *[(accepted(f"{knob}=0.001", 0.001, "the 1 ms floor of every wait"),
       defaults(**{knob: 0.001}))
      for knob in ("pool_timeout", "client_timeout", "leak_detection_threshold")],
    # DEPLOYMENT
    *[(refused(f"{key}={v!r}", v, "poolkit.E042", f'{DEP}["{key}"]'), deployment(**{key: v}))
      for key, v in (("hosts", 0), ("workers", -1), ("threads", 1.5), ("hosts", 10**7),
                     ("queries_per_request", math.inf), ("queries_per_request", math.nan),
                     ("queries_per_request", 0), ("spindles", -1), ("cores", True),
                     ("extra_connections", -1))],
]

# -- environment variables --------------------------------------------------------------------

ENVIRONMENT_ROWS: list[Row] = [
    *[refused(f"{name}={value!r}", value, "poolkit.E006", f"environment variable {name}")
      for name, value in (
          ("POOLKIT_STATEMENT_TIMEOUT", ""), ("POOLKIT_PGBOUNCER", ""),
          ("POOLKIT_CLIENT_TIMEOUT", ""), ("POOLKIT_LEAK_DETECTION_THRESHOLD", ""),
          ("POOLKIT_APPLICATION_NAME", ""), ("POOLKIT_POOL_SIZE", ""),
          ("POOLKIT_POOL_SIZE", "   "), ("POOLKIT_POOL_SIZE", "\u0661\u0660"),
          ("POOLKIT_POOL_SIZE", "1_000"), ("POOLKIT_POOL_SIZE", "+7"),
          ("POOLKIT_POOL_SIZE", "\uff17"), ("POOLKIT_POOL_SIZE", "7.0"),
          ("POOLKIT_POOL_SIZE", "0x10"), ("POOLKIT_POOL_SIZE", "ten"),
          ("POOLKIT_POOL_TIMEOUT", "nan"), ("POOLKIT_POOL_TIMEOUT", "inf"),
          ("POOLKIT_POOL_TIMEOUT", "-inf"), ("POOLKIT_POOL_TIMEOUT", "1e400"),
          ("POOLKIT_POOL_TIMEOUT", "5s"), ("POOLKIT_POOL_TIMEOUT", "1_0"),
          ("POOLKIT_POOL_TIMEOUT", "1e10"), ("POOLKIT_STATEMENT_TIMEOUT", "2147483648"),
          ("POOLKIT_PRE_PING_MODE", "tcp"), ("POOLKIT_POOL_PRE_PING", "sometimes"),
          ("POOLKIT_APPLICATION_NAME", "billing{v2}"), ("POOLKIT_DEFAULT__POOL_SIZE", "0"),
          ("POOLKIT_POOL_SIZ", "5"), ("POOLKIT_NOPE__POOL_SIZE", "5"),
          ("POOLKIT_DEFAULT__URL", "postgresql://h/db"), ("POOLKIT_POOL_TIMEOUT", "1e-300"),
          ("POOLKIT_CLIENT_TIMEOUT", "1e-9"), ("POOLKIT_LEAK_DETECTION_THRESHOLD", "1e-320"),
          ("POOLKIT_DEFAULT__POOL_TIMEOUT", "0.0001"))],
    accepted("POOLKIT_STATEMENT_TIMEOUT=none", "none",
             "documented: none (or null) is an explicit None, distinct from an empty value"),
    accepted("POOLKIT_POOL_SIZE= 5 ", " 5 ", "surrounding spaces are stripped, as in a shell"),
    accepted("POOLKIT_POOL_TIMEOUT=1e3", "1e3", "a plain ASCII float in exponent form"),
]


def _environment_variable(row: Row) -> str:
    return row.id.split("=", 1)[0]


# -- URLs -------------------------------------------------------------------------------------

OPT = 'DATABASES["default"]["OPTIONS"]'
E_URL = 'POOLKIT["ENGINES"]["x"]["url"]'

URL_ROWS: list[tuple[Row, str]] = [
    *[(refused(f"DATABASE_URL ?{query}", value, check, path, shows), f"?{query}")
      for query, value, check, path, shows in (
          ("isolation_level=7", 7, "poolkit.E003", f'{OPT}["isolation_level"]', "7"),
          ("isolation_level=0", 0, "poolkit.E003", f'{OPT}["isolation_level"]', "0"),
          ("isolation_level=serializable", "serializable", "poolkit.E003",
           f'{OPT}["isolation_level"]', "'serializable'"),
          ("application_name=billing{v2}", "billing{v2}", "poolkit.E003",
           f'{OPT}["application_name"]', "billing{v2}"),
          ("application_name={", "{", "poolkit.E003", f'{OPT}["application_name"]', "'{'"),
          ("pool_size=0", 0, "poolkit.E003", f'{OPT}["pool_size"]', "0"),
          ("pool_timeout=nan", "nan", "poolkit.E003", f'{OPT}["pool_timeout"]', "'nan'"),
          ("pool_timeout=1e10", "1e10", "poolkit.E003", f'{OPT}["pool_timeout"]',
           "10000000000.0"),
          ("statement_timeout=2147483648", 2147483648, "poolkit.E003",
           f'{OPT}["statement_timeout"]', "2147483648"),
          ("pool_pre_ping=maybe", "maybe", "poolkit.E003", f'{OPT}["pool_pre_ping"]', "'maybe'"),
          ("pgbouncer=statement", "statement", "poolkit.E003", f'{OPT}["pgbouncer"]',
           "'statement'"),
          ("pool_timeout=1e-300", "1e-300", "poolkit.E003", f'{OPT}["pool_timeout"]',
           "1e-300"),
          ("client_timeout=1e-9", "1e-9", "poolkit.E003", f'{OPT}["client_timeout"]', "1e-09"),
          ("leak_detection_threshold=1e-320", "1e-320", "poolkit.E003",
           f'{OPT}["leak_detection_threshold"]', "1e-320"),
          ("sslmode=bogus", "bogus", "poolkit.E003", f'{OPT}["sslmode"]', "'bogus'"),
          ("sslmode=requir", "requir", "poolkit.E003", f'{OPT}["sslmode"]', "'requir'"),
      )],
    (accepted("DATABASE_URL ?pool_timeout=0.001", 0.001, "the 1 ms floor of every wait"),
     "?pool_timeout=0.001"),
    *[(refused(f"ENGINES url {label}", url, "poolkit.E007", E_URL, None), url)
      for label, url in (
          ("mysql", "mysql://u:pw@h/db"), ("garbage", "not a url"),
          ("port", "postgresql://u:pw@h:port/db"), ("empty", ""),
          ("oracle", "oracle://u:pw@h/db"))],
    (accepted("ENGINES url with '@' in the password", "postgresql://app:p@tail@h/db",
              "read up to the last '@', as django-environ does"), "postgresql://app:p@tail@h/db"),
    (accepted("ENGINES url ?password=", "postgresql://u@h/db?password=pw",
              "moved to connect_args; never in the engine's URL"),
     "postgresql://u@h/db?password=pw"),
    (accepted("DATABASE_URL ?pool_size=", "", "django-environ drops an empty query parameter "
              "before poolkit sees it: the configured pool_size stays"), "?pool_size="),
    (accepted("DATABASE_URL ?isolation_level=4", 4, "SERIALIZABLE, psycopg's IsolationLevel"),
     "?isolation_level=4"),
]

# -- command arguments ------------------------------------------------------------------------

COMMAND_ROWS: list[Row] = [
    *[refused(f"{command} {argument} {value}", (command, argument, value), "exit 2", argument)
      for command, argument, value in (
          ("poolstatus", "--watch", "nan"), ("poolstatus", "--watch", "inf"),
          ("poolstatus", "--watch", "-inf"), ("poolstatus", "--watch", "1e-300"),
          ("poolstatus", "--watch", "0"), ("poolstatus", "--watch", "-1"),
          ("poolstatus", "--watch", "1e9"), ("poolstatus", "--watch", "1_0"),
          ("poolstatus", "--watch", "\u0661"), ("poolstatus", "--watch", "ten"),
          ("poolstatus", "--timeout", "nan"), ("poolstatus", "--timeout", "0"),
          ("poolstatus", "--timeout", "31"), ("poolstatus", "--format", "xml"),
          ("poolplan", "--queries-per-request", "1e-320"),
          ("poolplan", "--queries-per-request", "inf"),
          ("poolplan", "--queries-per-request", "nan"),
          ("poolplan", "--queries-per-request", "0"),
          ("poolplan", "--hosts", "0"), ("poolplan", "--hosts", "1e3"),
          ("poolplan", "--workers", "-1"), ("poolplan", "--threads", "\u0661\u0660"),
          ("poolplan", "--threads", "+7"), ("poolplan", "--threads", "1_000"),
          ("poolplan", "--cores", "99999999"), ("poolplan", "--spindles", "-1"),
          ("poolplan", "--extra-connections", "nan"), ("poolplan", "--db-cores", "0"),
          ("poolplan", "--max-connections", "0"), ("poolplan", "--reserved-connections", "-1"),
          ("poolplan", "--async-concurrency", "0"), ("poolplan", "--timeout", "inf"),
          ("poolplan", "--formula", "magic"), ("poolplan", "--preset", "huge"),
          ("poolcheck", "--timeout", "nan"), ("poolcheck", "--timeout", "inf"),
          ("poolcheck", "--timeout", "0"), ("poolcheck", "--format", "yaml"),
          # The settings' 1 ms floor: poolcheck's --timeout overrides HEALTH["timeout"].
          ("poolcheck", "--timeout", "1e-300"), ("poolstatus", "--timeout", "1e-300"),
          ("poolplan", "--timeout", "0.0009"))],
]

# -- HTTP headers and cookies -------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """A request and what an anonymous (or token-holding) caller must get back."""

    id: str
    url: str
    headers: dict[str, str]
    cookies: dict[str, str]
    status: int
    details: bool  # whether the body may hold the detailed report
    method: str = "get"
    why: str = ""


SESSION = settings.SESSION_COOKIE_NAME
HEADER = "X-Poolkit-Health-Token"

HTTP_ROWS: list[Http] = [
    *[Http(f"ready with token header {label}", "/health/ready/", {HEADER: value}, {}, 200, False)
      for label, value in (
          ("wrong", TOKEN + "x"), ("prefix", TOKEN[:-1]), ("trailing space", TOKEN + " "),
          ("upper", TOKEN.upper()), ("empty", ""), ("10k chars", "a" * 10_000),
          ("latin-1 bytes", "\u00ff" * 20), ("bearer in the wrong header", f"Bearer {TOKEN}"),
          ("doubled", TOKEN + "," + TOKEN))],
    *[Http(f"metrics with {label}", "/metrics/", headers, {}, 403, False)
      for label, headers in (
          ("no token", {}), ("wrong token", {HEADER: "nope" * 5}),
          ("Bearer wrong", {"Authorization": "Bearer " + TOKEN + "x"}),
          ("Bearer empty", {"Authorization": "Bearer "}),
          ("Basic", {"Authorization": "Basic " + TOKEN}),
          ("bearer lowercase scheme, wrong", {"Authorization": "bearer nope"}))],
    *[Http(f"{url} with a session cookie {label}", url, {}, {SESSION: value}, status, False)
      for url, status in (("/health/ready/", 200), ("/health/db/", 200), ("/metrics/", 403))
      for label, value in (("anonymous", "anonymous-cookie-12345678"), ("empty", ""),
                           ("sql", "' OR 1=1 --"), ("huge", "s" * 4000))],
    Http("ready, token in the query string", f"/health/ready/?token={TOKEN}", {}, {}, 200,
         False, why="the token is read from its header only (query strings reach access logs)"),
    *[Http(f"ready {method}", "/health/ready/", {}, {}, 405, False, method=method)
      for method in ("post", "put", "delete", "patch", "options")],
    Http("correct token", "/health/db/", {HEADER: TOKEN}, {}, 200, True,
         why="ACCEPTED: the token holder gets the details"),
    Http("correct Bearer token", "/metrics/", {"Authorization": f"Bearer {TOKEN}"}, {}, 200,
         True, why="ACCEPTED: Prometheus' authorization setting sends this"),
]

#: Pin tokens a client may send in the cookie or the header: every one must be ignored.
FORGED_PINS: list[tuple[str, str]] = [
    ("random", "abc"), ("cluster name", "main"), ("json", '{"main": ["0/0", 9e99]}'),
    ("empty", ""), ("huge", "x" * 4000), ("non-ascii", "\u00e9\u00e9"),
    ("signed elsewhere", "e30:1abcde:badsignature"), ("crlf", "a\r\nb"),
]


def _pin_rows() -> list[tuple[str, str]]:
    signed = pinning.encode_tokens({"main": pinning.PinToken(lsn=None, expires=9e9)})
    return [*FORGED_PINS, ("tampered", signed[:-3] + "abc"), ("truncated", signed[:20]),
            ("signature only", signed.rsplit(":", 1)[-1])]


# -- the tests --------------------------------------------------------------------------------


def _problems(poolkit_: dict[str, Any], environ_: dict[str, str] | None = None,
              databases: dict[str, Any] | None = None) -> list[Any]:
    return conf.build_settings(poolkit_, databases or DATABASES, environ_ or {})[1]


def _assert_outcome(row: Row, problems: list[Any]) -> None:
    if row.check_id == ACCEPTED:
        assert problems == [], f"{row.id} is accepted on purpose ({row.why}): {problems}"
        return
    matching = [p for p in problems if p.check_id == row.check_id and p.path == row.path]
    assert matching, f"{row.id}: expected {row.check_id} at {row.path}, got {problems}"
    message = matching[0].message
    assert any(word in message for word in ("must be", "names", "is ", "uses")), message
    if row.shows is not None:
        assert row.shows in message, f"{row.id}: {message!r} does not show {row.shows!r}"
    elif isinstance(row.value, str) and row.value.strip():
        assert row.value not in message, f"{row.id}: the secret is echoed in {message!r}"


@pytest.mark.parametrize(("row", "poolkit_"), SETTINGS_ROWS, ids=[r.id for r, _ in SETTINGS_ROWS])
def test_settings(row: Row, poolkit_: dict[str, Any]) -> None:
    _assert_outcome(row, _problems(poolkit_))


def test_a_token_equal_to_secret_key_is_refused_without_showing_it() -> None:
    problems = _problems(health(token=settings.SECRET_KEY))
    assert [(p.check_id, p.path) for p in problems] == [("poolkit.E032", f'{H}["token"]')]
    assert settings.SECRET_KEY not in problems[0].message


def _url_problems(query: str) -> list[Any]:
    entry = environ.Env.db_url_config("postgres://app@127.0.0.1:5432/app" + query)
    entry["ENGINE"] = PG
    return _problems({}, databases={"default": entry})


@pytest.mark.parametrize(("problems", "check_id", "path", "shown", "accepts"), [
    (lambda: _problems(defaults(client_timeout=1e-9)), "poolkit.E003",
     f'{D}["client_timeout"]', "1e-09", ">= 0.001 and <= 86400"),
    (lambda: _problems({}, {"POOLKIT_POOL_TIMEOUT": "1e-300"}), "poolkit.E006",
     "environment variable POOLKIT_POOL_TIMEOUT", "1e-300", ">= 0.001 and <= 3600"),
    (lambda: _url_problems("?leak_detection_threshold=1e-320"), "poolkit.E003",
     f'{OPT}["leak_detection_threshold"]', "1e-320", ">= 0.001 and <= 86400"),
    (lambda: _problems(health(timeout=1e-300)), "poolkit.E032", f'{H}["timeout"]', "1e-300",
     ">= 0.001 and <= 30"),
], ids=["settings", "environment", "url", "health"])
def test_a_wait_below_its_1_ms_floor_is_one_clear_error(problems: Any, check_id: str,
                                                          path: str, shown: str,
                                                          accepts: str) -> None:
    """Each form of a too-short wait is one problem naming the key path, the value as given
    and the accepted range (on main, each passed "> 0" and failed every query later)."""
    [problem] = problems()
    assert (problem.check_id, problem.path) == (check_id, path)
    assert shown in problem.message
    assert f"a number of seconds {accepts}" in problem.message


@pytest.mark.parametrize("row", ENVIRONMENT_ROWS, ids=[r.id for r in ENVIRONMENT_ROWS])
def test_environment(row: Row) -> None:
    poolkit_ = {"DEFAULTS": {"pgbouncer": "transaction"}}
    problems = _problems(poolkit_, {_environment_variable(row): row.value})
    if row.check_id == ACCEPTED:
        assert problems == [], row.why
        return
    assert [(p.check_id, p.path) for p in problems] == [(row.check_id, row.path)], problems


@pytest.mark.parametrize(("row", "url"), URL_ROWS, ids=[r.id for r, _ in URL_ROWS])
def test_urls(row: Row, url: str) -> None:
    if url.startswith("?"):
        entry = environ.Env.db_url_config("postgres://app@127.0.0.1:5432/app" + url)
        entry["ENGINE"] = PG
        _assert_outcome(row, _problems({}, databases={"default": entry}))
    else:
        _assert_outcome(row, _problems({"ENGINES": {"x": {"url": url}}}))


@pytest.mark.parametrize("row", COMMAND_ROWS, ids=[r.id for r in COMMAND_ROWS])
def test_command_arguments(row: Row) -> None:
    command, argument, value = row.value
    with pytest.raises(CommandError) as raised:
        call_command(command, argument, value)
    assert raised.value.returncode == 2, row.id
    message = str(raised.value)
    assert f"argument {argument}:" in message
    if value.startswith("-") and not value[1:2].isdigit():
        # argparse reads "-inf" as an option: still a usage error, exit 2.
        assert "expected one argument" in message
        return
    assert repr(value) in message or value in message
    assert "must be" in message or "invalid choice" in message


@pytest.fixture
def site(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, *(
        name for name in ("django.contrib.sessions.middleware.SessionMiddleware",
                          "django.contrib.auth.middleware.AuthenticationMiddleware")
        if name not in settings.MIDDLEWARE)]
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    settings.POOLKIT = {**poolkit(timeout=2.0, cache_ttl=60, databases=["default"]),
                        **routing(pin_seconds=15)}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("row", HTTP_ROWS, ids=[r.id for r in HTTP_ROWS])
def test_http(site: None, row: Http) -> None:
    client = Client(raise_request_exception=False)
    for name, value in row.cookies.items():
        client.cookies[name] = value
    response = getattr(client, row.method)(row.url, headers=row.headers)
    assert response.status_code == row.status, row.id
    body = response.content.decode()
    if row.url.startswith("/health/") and row.status != 405:
        assert ("databases" in response.json() or "reasons" in response.json()) == row.details
    elif row.url == "/metrics/":
        assert ("poolkit_" in body) == row.details


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("label", "value"), _pin_rows(), ids=[label for label, _ in _pin_rows()])
def test_forged_pins_are_ignored(site: None, label: str, value: str) -> None:
    assert pinning.decode_tokens(value, max_age=15) == {}
    client = Client(raise_request_exception=False)
    client.cookies["poolkit_pin"] = value
    header = value if value.isascii() and "\n" not in value and "\r" not in value else "x"
    response = client.get("/health/live/", headers={"X-Poolkit-Pin": header})
    assert response.status_code == 200
    assert "poolkit_pin" not in response.cookies  # nothing written, nothing re-issued


def test_the_table_counts(capsys: pytest.CaptureFixture[str]) -> None:
    rows = ([row for row, _ in SETTINGS_ROWS] + ENVIRONMENT_ROWS
            + [row for row, _ in URL_ROWS] + COMMAND_ROWS)
    accepted_rows = [row for row in rows if row.check_id == ACCEPTED]
    http_accepted = [row for row in HTTP_ROWS if row.why.startswith("ACCEPTED")]
    tried = len(rows) + 1 + len(HTTP_ROWS) + len(_pin_rows())
    on_purpose = len(accepted_rows) + len(http_accepted)
    with capsys.disabled():
        print(f"\nbad-input table: {tried} tried, {tried - on_purpose} refused or ignored, "
              f"{on_purpose} accepted on purpose")
    assert tried >= 150


def _every_field() -> list[tuple[str, Any]]:
    from django_poolkit.conf.knobs import KNOBS, OPTION_FIELDS
    from django_poolkit.health.settings import FIELDS as HEALTH
    from django_poolkit.ops.deployment import FIELDS as DEPLOYMENT
    from django_poolkit.routing.settings import (
        _REPLICA_OPTIONS,
        CLUSTER_OPTIONS,
        ROUTING_OPTIONS,
    )

    sections = {"knobs": KNOBS, "OPTIONS": OPTION_FIELDS, "HEALTH": HEALTH,
                "DEPLOYMENT": DEPLOYMENT, "ROUTING": ROUTING_OPTIONS,
                "CLUSTERS": CLUSTER_OPTIONS, "replicas": _REPLICA_OPTIONS}
    return [(f"{section}.{name}", field_) for section, found in sections.items()
            for name, field_ in found.items()]


@pytest.mark.parametrize(("name", "field_"), _every_field(), ids=[n for n, _ in _every_field()])
def test_one_schema_bounds_every_number(name: str, field_: Any) -> None:
    """Every setting of every section: a number rule refuses inf, nan and what lies past its
    maximum, and the text the messages quote states that maximum (one place decides both)."""
    from django_poolkit._schema import Invalid, bounds_of

    takes_numbers = True
    try:
        field_.check(1)
    except Invalid:
        takes_numbers = False
    for value in (math.inf, -math.inf, math.nan, 10**30, 1e300):
        with pytest.raises(Invalid):
            field_.check(value)
    bounds = bounds_of(field_.check)
    if takes_numbers and not isinstance(field_.default, bool):
        assert bounds is not None, f"{name} takes numbers but states no bounds"
    if bounds is not None:
        high = bounds[1]
        shown = str(int(high)) if float(high).is_integer() else str(high)
        # readmit_lag(_bytes) is bounded by max_lag(_bytes), which states the ceiling.
        assert shown in field_.accepted or "<= max_lag" in field_.accepted, (
            f"{name}: {field_.accepted!r} does not state {shown}")
