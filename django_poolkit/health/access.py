"""Who may see details: the one policy behind the health views' detailed body and the
metrics view.

A caller sees details when ``DEBUG`` is on, when it sends ``POOLKIT["HEALTH"]["token"]`` in
the ``token_header`` header or as ``Authorization: Bearer <token>`` (what Prometheus'
``authorization`` setting sends), or when it is an active staff user and ``staff_details`` is
on. Tokens are compared in constant time. The user is read only when the request carries a
session cookie, so a load balancer's or kubelet's probe never loads a session (which could
wait on the very database that is down).
"""

from __future__ import annotations

import hmac
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest

from .settings import HealthSettings

__all__ = ["may_see_details", "may_see_details_sync"]


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
            given.encode(), config.token.encode()):
        return True
    if not (config.staff_details and settings.SESSION_COOKIE_NAME in request.COOKIES):
        return False
    return None


def _is_staff(request: HttpRequest) -> bool:
    user: Any = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


async def may_see_details(request: HttpRequest, config: HealthSettings) -> bool:
    """Whether this caller may see details (for async views: the user is loaded without
    blocking the event loop)."""
    decided = _decided(request, config)
    if decided is not None:
        return decided
    auser = getattr(request, "auser", None)
    if auser is None:
        return hasattr(request, "user") and bool(await sync_to_async(_is_staff)(request))
    user = await auser()
    return bool(user.is_active and user.is_staff)


def may_see_details_sync(request: HttpRequest, config: HealthSettings) -> bool:
    """:func:`may_see_details` for sync views."""
    decided = _decided(request, config)
    return decided if decided is not None else _is_staff(request)
