"""The django-health-check backend (``django-poolkit[health-check]``).

django-health-check 4 needs Django 5.2, so it is an extra, not part of ``dev``: where it is
installed these tests run the backend against the real PostgreSQL; where it is not, they check
that importing the backend says which extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import pytest
from django.test import override_settings

from .helpers.health import HEALTHY_TIMEOUT, poolkit
from .helpers.tcpproxy import free_port

pytestmark = pytest.mark.postgres

INSTALLED = importlib.util.find_spec("health_check") is not None


def test_without_django_health_check_the_import_names_the_extra() -> None:
    if INSTALLED:
        module = importlib.import_module("django_poolkit.contrib.health_check")
        assert module.PoolkitDatabases.__module__ == module.__name__
        return
    with pytest.raises(ImportError, match=r"django-poolkit\[health-check\]"):
        importlib.import_module("django_poolkit.contrib.health_check")


@pytest.mark.django_db
async def test_the_backend_reports_the_probes(add_alias: Callable[..., str]) -> None:
    if not INSTALLED:
        return  # covered by the import test above
    from health_check.exceptions import ServiceUnavailable, ServiceWarning

    from django_poolkit.contrib.health_check import PoolkitDatabases

    with override_settings(POOLKIT=poolkit(databases=["default"], timeout=HEALTHY_TIMEOUT)):
        result = await PoolkitDatabases().get_result()
        assert result.error is None
        assert (await PoolkitDatabases(alias="default").get_result()).error is None
        missing = await PoolkitDatabases(alias="nowhere").get_result()
        assert isinstance(missing.error, ServiceUnavailable)

    add_alias("gone", PORT=str(free_port()))
    with override_settings(POOLKIT=poolkit(databases=["default", "gone"])):
        result = await PoolkitDatabases().get_result()
        assert isinstance(result.error, ServiceWarning)
        # django-health-check shows this to every caller: the status, never the reasons.
        assert str(result.error) == (
            "Warning: degraded (reasons: poolkit's health/db/ endpoint, with the token)")
        result = await PoolkitDatabases(alias="gone").get_result()
        assert isinstance(result.error, ServiceUnavailable)
    with override_settings(POOLKIT=poolkit(databases=["gone"], primary="gone")):
        assert isinstance((await PoolkitDatabases().get_result()).error, ServiceUnavailable)
