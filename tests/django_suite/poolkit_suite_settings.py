"""Settings for Django's own test suite (``tests/runtests.py`` of Django's sdist) on the real
PostgreSQL, used by ``scripts/django-suite``. ``DJSUITE_BACKEND`` chooses the backend:
``pooled`` (django_poolkit's, the default) or ``stock`` (Django's, for the baseline).

runtests.py needs the ``default`` and ``other`` aliases; the rest mirrors Django's own
``test_sqlite.py``. The test databases are named after the Django version, the backend and
``DATABASE_URL``'s database, so runs on other versions, backends or checkouts do not collide.
"""

import os
from urllib.parse import urlsplit

import django

_kind = os.environ.get("DJSUITE_BACKEND", "pooled")
if _kind not in ("pooled", "stock"):
    raise RuntimeError(f"DJSUITE_BACKEND={_kind!r}: use 'pooled' or 'stock'")
_url = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/poolkit"))
_name = _url.path.lstrip("/") or "poolkit"
_series = "".join(map(str, django.VERSION[:2]))
_engine = ("django_poolkit.db.backends.postgresql" if _kind == "pooled"
           else "django.db.backends.postgresql")


def _database(suffix: str) -> dict[str, object]:
    return {
        "ENGINE": _engine,
        "NAME": _name,
        "USER": _url.username or "postgres",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": _url.port or 5432,
        "TEST": {"NAME": f"djsuite{_series}_{_kind}_{_name}{suffix}"},
    }


DATABASES = {"default": _database(""), "other": _database("_other")}
# Small pools: two workers, two aliases each, on a server other test runs share.
POOLKIT = {"DEFAULTS": {"pool_size": 2, "max_overflow": 4}}

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if django.VERSION < (6, 0):  # Django 6's test settings rely on the new BigAutoField default
    DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "poolkit_suite_runner.RecordingRunner"
