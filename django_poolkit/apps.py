"""The app config: wiring only. ``ready()`` registers the checks and the fork and exit hooks;
it never reads ``POOLKIT`` or opens a connection."""

from __future__ import annotations

import atexit
import os

from django.apps import AppConfig

_hooks_installed = False


def _install_process_hooks() -> None:
    """Once per process: forget pools in forked children, close them at interpreter exit."""
    global _hooks_installed
    if _hooks_installed:
        return
    from .api import dispose_all
    from .engines import engine_registry as registry

    os.register_at_fork(after_in_child=registry.after_fork_in_child)
    atexit.register(dispose_all)
    _hooks_installed = True


class PoolkitConfig(AppConfig):
    """django-poolkit's app config."""

    name = "django_poolkit"
    verbose_name = "Connection pools"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .dashboard import checks as dashboard_checks  # noqa: F401  (its admin link)
        from .db import checks as backend_checks  # noqa: F401  (the pooled backend's checks)

        _install_process_hooks()
