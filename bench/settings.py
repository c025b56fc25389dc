"""Django settings of the bench server, one configuration per process (``BENCH_CONFIG``).

Everything but the database entry is the same for every configuration and kept minimal (no
middleware, no sessions, DEBUG off), so that the differences measured are the connection
handling's. Environment:

- ``BENCH_CONFIG``: ``A`` stock backend, ``CONN_MAX_AGE=0``; ``B`` stock, ``CONN_MAX_AGE=60``;
  ``H`` B with ``CONN_HEALTH_CHECKS=True``; ``C`` Django's psycopg pool (``OPTIONS["pool"]``);
  ``D`` django-db-connection-pool's PostgreSQL backend with its defaults; ``E`` poolkit's
  backend with its defaults.
- ``BENCH_DATABASE_URL``: the bench database (``postgres://user[:password]@host:port/name``).
- ``BENCH_POOL_SIZE``: connections per process for C, D and E (no overflow, so all three
  hold at most the same number).
- ``BENCH_POOLKIT_OPTIONS``: JSON object of poolkit pool settings merged into E's (the CPU
  benchmark's variants of E, e.g. ``{"pre_ping_mode": "query"}``).
- ``BENCH_ALIASES``: how many identical aliases (``default``, ``db1``...; the memory
  benchmark builds 4).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote, urlsplit

CONFIG = os.environ.get("BENCH_CONFIG", "B")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "4"))
POOLKIT_OPTIONS: dict[str, Any] = json.loads(os.environ.get("BENCH_POOLKIT_OPTIONS") or "{}")
ALIASES = int(os.environ.get("BENCH_ALIASES", "1"))
_url = urlsplit(os.environ.get("BENCH_DATABASE_URL",
                               "postgres://postgres@127.0.0.1:5432/poolkit_bench"))

SECRET_KEY = "bench-only-not-a-secret"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "bench.urls"
WSGI_APPLICATION = "bench.wsgi.application"
INSTALLED_APPS: list[str] = ["bench"]
MIDDLEWARE: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_database: dict[str, Any] = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": _url.path.lstrip("/"),
    "USER": unquote(_url.username or ""),
    "PASSWORD": unquote(_url.password or ""),
    "HOST": _url.hostname or "",
    "PORT": str(_url.port or ""),
    "CONN_MAX_AGE": 0,
    # The harness counts each configuration's server connections by this name. (E's are
    # named by poolkit's own application_name default, "poolkit:default:...": poolkit reads
    # an OPTIONS value as the user's choice, so E sets none.)
    "OPTIONS": {} if CONFIG == "E" else {"application_name": f"bench-{CONFIG}"},
}
POOLKIT: dict[str, Any] = {}

if CONFIG in ("B", "H"):
    _database["CONN_MAX_AGE"] = 60
    # H: what a careful user of the stock backend runs (a round trip when a request
    # starts on a connection that served an earlier one).
    _database["CONN_HEALTH_CHECKS"] = CONFIG == "H"
elif CONFIG == "C":
    # Django's defaults otherwise: no check on checkout (CONN_HEALTH_CHECKS is False).
    _database["OPTIONS"]["pool"] = {"min_size": POOL_SIZE, "max_size": POOL_SIZE}
elif CONFIG == "D":
    # Its defaults otherwise: PRE_PING=True, RECYCLE=900, TIMEOUT=30.
    _database["ENGINE"] = "dj_db_conn_pool.backends.postgresql"
    _database["POOL_OPTIONS"] = {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": 0}
elif CONFIG == "E":
    # poolkit's defaults apart from the size (pre-ping, its mode, reset policy, timeout).
    _database["ENGINE"] = "django_poolkit.db.backends.postgresql"
    INSTALLED_APPS.insert(0, "django_poolkit")
    POOLKIT = {"DATABASES": {f"db{n}" if n else "default": {
        "pool_size": POOL_SIZE, "max_overflow": 0, **POOLKIT_OPTIONS} for n in range(ALIASES)}}
elif CONFIG != "A":
    raise ValueError(f"BENCH_CONFIG must be one of A, B, H, C, D, E (F is bench.plain_wsgi), "
                     f"got {CONFIG!r}")

DATABASES = {f"db{n}" if n else "default": {**_database, "OPTIONS": {**_database["OPTIONS"]}}
             for n in range(ALIASES)}
if CONFIG == "C":
    for _entry in DATABASES.values():
        _entry["OPTIONS"]["pool"] = {**_entry["OPTIONS"]["pool"]}

# Errors go to the server's error log, which the harness shows when a server cannot start.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"},
                "django_poolkit": {"handlers": ["stderr"], "level": "WARNING"}},
}
