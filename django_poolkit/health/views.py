"""The health views: ``live``, ``ready`` and ``db``, rendering :mod:`django_poolkit.health.report`.

They are async views, so under ASGI a slow database never blocks the event loop (the probes
run in threads; the view awaits them). Under WSGI Django runs them in a private loop, which
works the same way. Each is usable with GET and HEAD only, marked never-cache and excluded from
``ATOMIC_REQUESTS`` (an open transaction around a health check would take a pool slot and turn
an outage into an error page instead of a 503).

Anonymous callers get ``{"status": ...}`` and the status code. The detailed body (reasons,
timings, per-database figures, host, port and database name, but never a user, password or
DSN) goes to the callers :mod:`~django_poolkit.health.access` allows (the token, staff,
``DEBUG``), the same policy as the metrics view.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils.cache import add_never_cache_headers

from .access import may_see_details
from .runner import checker
from .settings import HEALTHY

__all__ = ["db", "live", "ready"]

_ALLOWED_METHODS = ("GET", "HEAD")


class EveryAlias(frozenset[str]):
    """Contains every database alias: Django's ``make_view_atomic`` asks ``alias in
    view._non_atomic_requests`` for each alias, and aliases are only known at request time.
    ``transaction.non_atomic_requests`` marks one alias, and for an async view an alias left
    unmarked makes ``ATOMIC_REQUESTS`` raise."""

    def __contains__(self, alias: object) -> bool:
        return True


#: The name other views imported before it was public (the dashboard).
_EveryAlias = EveryAlias

AsyncView = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponse]]


def _health_view(view: AsyncView) -> AsyncView:
    """GET/HEAD only, never cached, never wrapped in a transaction. Done here rather than with
    ``require_safe``/``never_cache``, whose async support only arrived in Django 5.0."""

    async def wrapper(request: HttpRequest) -> HttpResponse:
        response: HttpResponse
        if request.method not in _ALLOWED_METHODS:
            response = HttpResponseNotAllowed(_ALLOWED_METHODS)
        else:
            response = await view(request)
        add_never_cache_headers(response)
        return response

    wrapper.__name__ = view.__name__
    wrapper.__qualname__ = view.__qualname__
    wrapper.__doc__ = view.__doc__
    wrapper.__module__ = view.__module__
    wrapper._non_atomic_requests = EveryAlias()  # type: ignore[attr-defined]
    return wrapper


def _json_response(body: dict[str, Any], status: int) -> JsonResponse:
    return JsonResponse(body, status=status, json_dumps_params={"separators": (",", ":")})


@_health_view
async def live(request: HttpRequest) -> HttpResponse:
    """Liveness: this process answers requests. Touches no database, ever: a liveness
    failure restarts the pod, and restarting does not fix a slow database."""
    return _json_response({"status": HEALTHY}, 200)


@_health_view
async def ready(request: HttpRequest) -> HttpResponse:
    """Readiness: the primary is reachable and writable, its pool is not saturated and the
    replica policy is met. 200 for healthy and degraded, 503 for unhealthy."""
    config = checker.config()
    report = await checker.acheck()
    details = await may_see_details(request, config, report)
    return _json_response(report.as_dict(details=details, databases=False), report.http_status)


@_health_view
async def db(request: HttpRequest) -> HttpResponse:
    """Per-database detail: status, role, latency, replica lag and pool figures (with
    details), from the same round of probes as :func:`ready`."""
    config = checker.config()
    report = await checker.acheck()
    details = await may_see_details(request, config, report)
    return _json_response(report.as_dict(details=details), report.http_status)
