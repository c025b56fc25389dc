"""The dashboard's system check: the admin's index links to the dashboard only when Django
finds poolkit's ``admin/index.html`` first, which needs ``django_poolkit`` listed before
``django.contrib.admin`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.core.checks import CheckMessage, Tags, Warning, register
from django.urls import NoReverseMatch, reverse

from ..check_ids import W_DASHBOARD_ADMIN_ORDER

__all__ = ["check_admin_link"]


@register(Tags.urls)
def check_admin_link(app_configs: Sequence[AppConfig] | None = None,
                     **kwargs: Any) -> list[CheckMessage]:
    """Warn when the dashboard is mounted, the admin installed, and the admin's templates
    win over poolkit's (the link from the admin index would silently be missing)."""
    if not apps.is_installed("django.contrib.admin"):
        return []
    names = [config.name for config in apps.get_app_configs()]
    if names.index("django_poolkit") < names.index("django.contrib.admin"):
        return []
    try:
        reverse("poolkit_dashboard:index")
    except NoReverseMatch:
        return []
    return [Warning(
        "django.contrib.admin comes before django_poolkit in INSTALLED_APPS, so the admin's "
        "index does not link to the connection pool dashboard.",
        hint='Move "django_poolkit" above "django.contrib.admin" in INSTALLED_APPS.',
        id=W_DASHBOARD_ADMIN_ORDER)]
