"""The dashboard's permission, ``django_poolkit.view_dashboard``.

Django declares a permission through a model's ``Meta.permissions``; this model exists only
to carry one that belongs to no rows. It has no table (``managed = False``: its migration
runs no SQL) and nothing queries it. ``migrate`` creates the permission (``post_migrate``);
a superuser has it implicitly, and an admin grants it to staff users or groups.
"""

from __future__ import annotations

from django.db import models

__all__ = ["Dashboard"]


class Dashboard(models.Model):  # noqa: DJ008 (never instantiated: no __str__ to show)
    """Carries ``view_dashboard``: who may see the dashboard and health's staff details."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("view_dashboard", "Can view the connection pool dashboard")]
        verbose_name = "connection pool dashboard"
