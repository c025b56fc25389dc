"""The admin index's link to the dashboard, whatever the order of ``INSTALLED_APPS``.

An ``admin/index.html`` of poolkit's own would win over the admin's only when
``django_poolkit`` comes first (``INSTALLED_APPS += ["django_poolkit"]`` puts it last, and the
link silently disappeared). The default admin site's ``index_template`` (a documented
attribute of ``AdminSite``) names poolkit's template instead, which extends the admin's
``admin/index.html`` (or the project's own override of it).
"""

from __future__ import annotations

from django.apps import apps

__all__ = ["INDEX_TEMPLATE", "link_admin_index"]

INDEX_TEMPLATE = "django_poolkit/admin/index.html"


def link_admin_index() -> None:
    """Point the default admin site's index at :data:`INDEX_TEMPLATE`, unless the project
    set an index template of its own (which can extend ours to keep the link)."""
    if not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib import admin

    if admin.site.index_template is None:
        admin.site.index_template = INDEX_TEMPLATE
