"""Settings for the test suite: the demo project against the real PostgreSQL.

``DATABASE_URL`` overrides the server (default: the local cluster on 127.0.0.1:5432 with trust
authentication). Tests that need the server fail, never skip, when it is missing.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/poolkit")

from .settings import *  # noqa: F403

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}

# The suite runs on the pooled backend, as the demo does on PostgreSQL (tests compare it with
# Django's stock backend on the same database through an alias they add themselves).
# Read-replica routing tests: the streaming replica that scripts/replica runs on port 5433.
# TEST["MIRROR"] creates nothing there: the alias reads the test database that reached the
# replica by replication (django_poolkit.testing_replicas).
DATABASES["replica"] = {  # noqa: F405
    **environ.Env.db_url_config(os.environ.get(  # noqa: F405
        "TEST_REPLICA_URL", "postgres://postgres@127.0.0.1:5433/poolkit")),
    "ENGINE": DATABASES["default"]["ENGINE"],  # noqa: F405
    "TEST": {"MIRROR": "default"},
}
