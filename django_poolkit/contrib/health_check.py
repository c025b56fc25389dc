"""A django-health-check (4.x) backend reporting poolkit's probes.

``pip install django-poolkit[health-check]``, then list it among the view's checks::

    from health_check.views import HealthCheckView

    path("ht/", HealthCheckView.as_view(checks=[
        "django_poolkit.contrib.health_check.PoolkitDatabases",            # the readiness verdict
        ("django_poolkit.contrib.health_check.PoolkitDatabases", {"alias": "replica1"}),
    ])),

It reads the same cached, single-flight round as ``health/ready/``, so adding it does not add
probes. Unhealthy raises ``ServiceUnavailable``, degraded raises ``ServiceWarning``. The
message is the status alone: django-health-check shows it to every caller, and the reasons
(which database, how far behind, which error) are what ``health/ready/`` keeps for callers
with the token; they are at ``health/db/`` with the token.
"""

from __future__ import annotations

import dataclasses
import datetime

from .. import health

try:
    from health_check.base import HealthCheck
    from health_check.exceptions import ServiceUnavailable, ServiceWarning
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "django_poolkit.contrib.health_check needs django-health-check; install "
        "django-poolkit[health-check]") from error

__all__ = ["PoolkitDatabases"]


@dataclasses.dataclass
class PoolkitDatabases(HealthCheck):  # type: ignore[misc]  # health_check is untyped
    """The readiness verdict (``alias`` None) or one database's status."""

    alias: str | None = None

    # django-health-check cancels a check after timeout + 1 s; poolkit's round ends sooner.
    timeout = datetime.timedelta(seconds=2)

    async def run(self) -> None:
        """Raise ServiceUnavailable when unhealthy and ServiceWarning when degraded."""
        report = await health.checker.acheck()
        if self.alias is None:
            status = report.status
        else:
            verdict = report.databases.get(self.alias)
            if verdict is None:
                raise ServiceUnavailable(f"database {self.alias!r} is not probed (see "
                                         'POOLKIT["HEALTH"]["databases"])')
            status = verdict.status
        message = f"{status} (reasons: poolkit's health/db/ endpoint, with the token)"
        if status == health.UNHEALTHY:
            raise ServiceUnavailable(message)
        if status == health.DEGRADED:
            raise ServiceWarning(message)
