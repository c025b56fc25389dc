"""Raises the fix for ``ENGINE = "django_poolkit"`` (the app's name, not its backend)."""

from .db.wrong_engine import refuse

refuse("django_poolkit")
