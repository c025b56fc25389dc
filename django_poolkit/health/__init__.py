"""Health probes: the one implementation behind the health views, ``manage.py poolcheck``,
the metrics and the django-health-check backend.

A round probes every database over a fresh connection outside the pools (:mod:`.probe`),
bounded by ``timeout`` and cached for ``cache_ttl`` (:mod:`.runner`), and turns the answers
and the pools' gauges into a typed report (:mod:`.report`). Errors are fixed phrases, never
the driver's text; details go only to the callers :mod:`.access` allows. How and why: the
README, "Health endpoints".
"""

from __future__ import annotations

from ..exceptions import describe_error
from .probe import ProbeResult, probe_database
from .report import DatabaseHealth, HealthReport, evaluate, worst
from .runner import HealthChecker, checker
from .settings import (
    DEGRADED,
    HEALTHY,
    SETTING_RULES,
    UNHEALTHY,
    HealthSettings,
    Status,
    health_settings,
    parse_settings,
    with_overrides,
)

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "SETTING_RULES",
    "UNHEALTHY",
    "DatabaseHealth",
    "HealthChecker",
    "HealthReport",
    "HealthSettings",
    "ProbeResult",
    "Status",
    "checker",
    "describe_error",
    "evaluate",
    "health_settings",
    "parse_settings",
    "probe_database",
    "with_overrides",
    "worst",
]

