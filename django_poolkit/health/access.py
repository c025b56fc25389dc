"""Who may see details: the one policy behind the health views' detailed body and the
metrics view.

A caller sees details when ``DEBUG`` is on, when it sends ``POOLKIT["HEALTH"]["token"]`` in
the ``token_header`` header or as ``Authorization: Bearer <token>`` (what Prometheus'
``authorization`` setting sends), or when ``staff_details`` is on (off by default) and it is
an active staff user with the ``django_poolkit.view_dashboard`` permission (a superuser has
it), the rule of the dashboard too (:func:`may_see_pools`). Tokens are compared in constant
time.

The staff check is the only part of an answer that reads the application's database (the
session and the user): a liveness or readiness answer must depend on nothing but its cached
probe. So it runs only with ``staff_details`` on, for a request that carries a session cookie
and no valid token, only while the cached round did not find the databases unhealthy, and any
error of it (a database down, a pool timeout, a missing table) counts as "not staff": the
answer stays the probe's 200 or 503 (the metrics view's 403), never a 500.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest

from ..pinning import use_primary
from .report import HealthReport
from .settings import UNHEALTHY, HealthSettings

__all__ = ["VIEW_DASHBOARD", "amay_see_pools", "may_see_details", "may_see_details_sync",
           "may_see_pools"]

logger = logging.getLogger(__name__)

#: The permission that shows host names, pids, every ``application_name`` on the server,
#: database users and hosts: the dashboard, and health's and the metrics' details for staff.
VIEW_DASHBOARD = "django_poolkit.view_dashboard"


def may_see_pools(user: Any) -> bool:
    """Whether ``user`` may see the dashboard: active, staff, and ``view_dashboard`` (a
    superuser has every permission without a query; a staff user's are read once per
    request, from the primary: a user loaded from it would send the read to a replica of its
    cluster, which may be the one that is down). ``is_staff`` alone is not enough."""
    if user is None or not (user.is_active and user.is_staff):
        return False
    with use_primary():
        return bool(user.has_perm(VIEW_DASHBOARD))


async def amay_see_pools(user: Any) -> bool:
    """:func:`may_see_pools` for async code (the permissions are read without blocking)."""
    if user is None or not (user.is_active and user.is_staff):
        return False
    async with use_primary():
        return bool(await user.ahas_perm(VIEW_DASHBOARD))


def _presented_token(request: HttpRequest, config: HealthSettings) -> str | None:
    given = request.headers.get(config.token_header)
    if given is None:
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            given = authorization.removeprefix("Bearer ").strip()
    return given


def _decided(request: HttpRequest, config: HealthSettings) -> bool | None:
    """True or False when the request alone decides; None when the user must be asked."""
    if settings.DEBUG:
        return True
    given = _presented_token(request, config)
    if config.token and given is not None and hmac.compare_digest(
            given.encode("utf-8", "replace"), config.token.encode("utf-8")):
        return True
    if not (config.staff_details and settings.SESSION_COOKIE_NAME in request.COOKIES):
        return False
    return None


def _is_staff(request: HttpRequest) -> bool:
    try:
        return may_see_pools(getattr(request, "user", None))
    except Exception:  # any failure of the optional lookup means "not staff"
        logger.debug("details: the staff lookup failed; answering as anonymous", exc_info=True)
        return False


async def may_see_details(request: HttpRequest, config: HealthSettings,
                          report: HealthReport | None = None) -> bool:
    """Whether this caller may see details (for async views: the user is loaded without
    blocking the event loop). ``report``: the round being answered; while it is unhealthy
    the session is not looked up."""
    decided = _decided(request, config)
    if decided is not None:
        return decided
    if report is not None and report.status == UNHEALTHY:
        return False
    auser = getattr(request, "auser", None)
    if auser is None:
        return hasattr(request, "user") and bool(await sync_to_async(_is_staff)(request))
    try:
        return await amay_see_pools(await auser())
    except Exception:  # any failure of the optional lookup means "not staff"
        logger.debug("details: the staff lookup failed; answering as anonymous", exc_info=True)
        return False


def may_see_details_sync(request: HttpRequest, config: HealthSettings) -> bool:
    """:func:`may_see_details` for sync views."""
    decided = _decided(request, config)
    return decided if decided is not None else _is_staff(request)
