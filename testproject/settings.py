"""Demo settings, configured from the environment through django-environ.

- ``DATABASE_URL``: the primary database (default: an SQLite file, so the demo runs anywhere).
  Pool settings may ride along as query parameters, e.g.
  ``postgres://app@127.0.0.1:5432/app?pool_size=10&pool_timeout=5``.
- ``REPLICA_URLS``: comma-separated read replicas of the primary (optional); each becomes an
  alias ``replica1``, ``replica2``, ... that mirrors ``default`` in tests.
- On PostgreSQL the aliases use the pooled backend ``django_poolkit.db.backends.postgresql``.
- ``POOLKIT_*``: pool settings (see the README's environment variable table).
"""

from pathlib import Path
from typing import Any

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env.str("SECRET_KEY", default="demo-only-not-a-secret")
# Off unless asked for: DEBUG opens health details and error pages to every caller. Only
# scripts/demo turns it on (and says so when it starts).
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

# django_poolkit before django.contrib.admin: its admin/index.html adds the link to the
# connection pool dashboard (/poolkit/) to the admin's index.
INSTALLED_APPS = [
    "django_poolkit",
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "testproject.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # PoolTimeout (and NoHealthyReplica) become 503 with Retry-After, not a 500.
    "django_poolkit.middleware.PoolkitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
ASGI_APPLICATION = "testproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": [
            "django.template.context_processors.request",
            "django.contrib.auth.context_processors.auth",
            "django.contrib.messages.context_processors.messages",
        ]},
    }
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'demo.sqlite3'}"),
}
for number, url in enumerate(env.list("REPLICA_URLS", default=[]), start=1):
    DATABASES[f"replica{number}"] = {
        **environ.Env.db_url_config(url),
        "TEST": {"MIRROR": "default"},
    }

# On PostgreSQL every ORM connection comes from poolkit's pool for its alias (the pooled
# backend); SQLite keeps Django's own backend.
for database in DATABASES.values():
    if database["ENGINE"] == "django.db.backends.postgresql":
        database["ENGINE"] = "django_poolkit.db.backends.postgresql"

POOLKIT: dict[str, Any] = {
    "DATABASES": {"default": {"preset": "small_api"}},
}

# With REPLICA_URLS, reads go to the replicas and writes (and a writer's next reads) to the
# primary: see the README, "Read replicas".
REPLICA_ALIASES = [alias for alias in DATABASES if alias.startswith("replica")]
if REPLICA_ALIASES:
    POOLKIT["ROUTING"] = {"CLUSTERS": {"main": {"primary": "default",
                                                "replicas": REPLICA_ALIASES}}}
    DATABASE_ROUTERS = ["django_poolkit.routers.PrimaryReplicaRouter"]
    TEST_RUNNER = "django_poolkit.testing.ReplicaTestRunner"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_poolkit": {"handlers": ["console"], "level": env.str("LOG_LEVEL",
                                                                      default="INFO")},
    },
}
