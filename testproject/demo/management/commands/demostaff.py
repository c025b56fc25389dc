"""``manage.py demostaff``: create (or reset) the demo's staff user and print its password.

Demo only: the password is new on every run and printed in clear so a person can log in to
the admin and the connection pool dashboard (/poolkit/).
"""

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand

USERNAME = "demo-staff"


class Command(BaseCommand):
    help = "Create or reset the demo staff user (demo only) and print its name and password."

    def handle(self, *args: Any, **options: Any) -> None:
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username=USERNAME)
        user.is_staff = True
        user.is_active = True
        user.set_password(password)
        user.save()
        # The dashboard needs view_dashboard besides is_staff.
        user.user_permissions.add(Permission.objects.get(
            content_type__app_label="django_poolkit", codename="view_dashboard"))
        self.stdout.write(f"demo staff user (demo only): {USERNAME} / {password}")
