"""Users of the dashboard tests: a staff user holding ``django_poolkit.view_dashboard``
(granted the way an admin does, directly or through a group)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission


def view_dashboard() -> Permission:
    """The permission ``migrate`` created for the app's ``Dashboard`` model."""
    return Permission.objects.get(content_type__app_label="django_poolkit",
                                  codename="view_dashboard")


def pool_viewer(username: str = "ops", *, through_group: bool = False, **fields: Any) -> Any:
    """A saved, active staff user with ``view_dashboard`` (password ``x``)."""
    user = get_user_model().objects.create_user(username, password="x", is_staff=True,
                                                **fields)
    if through_group:
        group = Group.objects.create(name=f"{username}-operators")
        group.permissions.add(view_dashboard())
        user.groups.add(group)
    else:
        user.user_permissions.add(view_dashboard())
    return user
