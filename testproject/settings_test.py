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
