"""A clear error for an ENGINE that names a path under django_poolkit which is not the
backend. Django imports ``<ENGINE>.base`` and, on an ImportError, answers only with its own
list of built-in backends; the likely mistakes have a ``base`` module here that raises
:func:`refuse` instead (Django lets an ``ImproperlyConfigured`` through unchanged)."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from ..engines.params import POOLED_BACKEND

__all__ = ["refuse"]


def refuse(engine: str) -> None:
    """Raise the error for ``ENGINE = engine``."""
    raise ImproperlyConfigured(
        f'DATABASES ENGINE "{engine}" is not a database backend: the pooled backend is '
        f'"{POOLED_BACKEND}" (and "django_poolkit" belongs in INSTALLED_APPS).')
