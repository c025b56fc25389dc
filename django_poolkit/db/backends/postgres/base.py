"""Raises the fix for ``ENGINE = "django_poolkit.db.backends.postgres"``."""

from ...wrong_engine import refuse

refuse("django_poolkit.db.backends.postgres")
