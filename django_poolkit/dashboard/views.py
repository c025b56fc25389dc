"""The dashboard's page and its JSON twin, for active staff users with the
``django_poolkit.view_dashboard`` permission (superusers have it).

Others are sent to the admin's login page when the admin is installed and mounted, and get
403 when it is not (the JSON always answers 403). Both views are GET/HEAD only, never cached
(``Cache-Control: no-store``), never framed (``X-Frame-Options: DENY`` and a CSP
``frame-ancestors 'none'`` on every answer, whatever the project's middleware), and never
wrapped in ``ATOMIC_REQUESTS``' transaction (which would take a pool slot). The JSON answer
carries the same document as the page plus the page's rendered sections, which the page's
small script swaps in; with JavaScript off, a reload shows fresh figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.apps import apps
from django.contrib.auth.views import redirect_to_login
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from ..health.access import VIEW_DASHBOARD, may_see_pools
from ..health.views import _EveryAlias
from . import data

__all__ = ["data_view", "index"]

#: Auto-refresh period of the page, seconds (``?refresh=N`` picks another, 0 turns it off).
REFRESH_S = 5
_REFRESH_RANGE = (2, 300)

# Drawing sizes of the inline SVGs (user units; the SVGs scale to their container).
_BAR_WIDTH = 300.0
_CHART_WIDTH = 300.0
_CHART_HEIGHT = 60.0


#: The anti-framing policy of every answer (a page of host names and pids must not be
#: clickjacked), set here rather than left to ``XFrameOptionsMiddleware``, which a project
#: may have removed or set to ``SAMEORIGIN``.
FRAME_ANCESTORS = "frame-ancestors 'none'"


def _admin_index() -> str | None:
    """The admin's index URL when the admin is installed and mounted, else None."""
    if not apps.is_installed("django.contrib.admin"):
        return None
    try:
        return reverse("admin:index")
    except NoReverseMatch:
        return None


def _deny(request: HttpRequest, *, json_answer: bool) -> HttpResponse:
    if not json_answer and _admin_index() is not None:
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    if json_answer:
        return JsonResponse({"error": "staff only", "permission": VIEW_DASHBOARD}, status=403)
    return HttpResponse(f"Staff with the {VIEW_DASHBOARD} permission only.\n", status=403,
                        content_type="text/plain")


def _unframed(view: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest],
                                                                        HttpResponse]:
    """Every answer of ``view`` (its 302, 403 and 405 too) refuses to be framed."""

    def unframed(request: HttpRequest) -> HttpResponse:
        response = view(request)
        response["X-Frame-Options"] = "DENY"  # XFrameOptionsMiddleware keeps a view's own
        response["Content-Security-Policy"] = FRAME_ANCESTORS
        return response

    return unframed


def _dashboard_view(view: Callable[[HttpRequest], HttpResponse], name: str, *,
                    json_answer: bool) -> Callable[[HttpRequest], HttpResponse]:
    """Staff with ``view_dashboard`` only, GET/HEAD only, never cached, never framed,
    outside ``ATOMIC_REQUESTS``."""

    def wrapper(request: HttpRequest) -> HttpResponse:
        if not may_see_pools(getattr(request, "user", None)):
            return _deny(request, json_answer=json_answer)
        return view(request)

    wrapper.__name__ = name
    wrapper.__doc__ = view.__doc__
    guarded: Any = _unframed(never_cache(require_safe(wrapper)))
    guarded.__name__ = name
    guarded.__doc__ = view.__doc__
    guarded._non_atomic_requests = _EveryAlias()
    return guarded  # type: ignore[no-any-return]


def _refresh(request: HttpRequest) -> int:
    try:
        value = int(request.GET.get("refresh", REFRESH_S))
    except ValueError:
        return REFRESH_S
    if value <= 0:
        return 0
    return max(_REFRESH_RANGE[0], min(_REFRESH_RANGE[1], value))


def _polyline(values: Sequence[float], top: float) -> str:
    """SVG points of a line chart of ``values`` over the chart, oldest at the left, scaled so
    ``top`` is the chart's height."""
    if not values:
        return ""
    # The x axis spans the points there are (its label says how long): a young series
    # fills the chart rather than a window it has no data for. One point sits at the right.
    span = max(2, len(values))
    step = _CHART_WIDTH / (span - 1)
    start = _CHART_WIDTH - step * (len(values) - 1)
    scale = _CHART_HEIGHT / top if top > 0 else 0.0
    return " ".join(f"{start + step * index:.1f},{_CHART_HEIGHT - value * scale:.1f}"
                    for index, value in enumerate(values))


def _duration_text(seconds: float) -> str:
    """``"30 s"``, or ``"2.5 min"`` from two minutes on: the span of a chart's x axis."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _bar(gauges: Mapping[str, Any]) -> dict[str, Any]:
    """The gauge bar: checked out, then idle, against the capacity (or what is open when
    overflow is unlimited), with a mark at ``pool_size``."""
    out, idle = gauges["pool_checked_out"], gauges["pool_checked_in"]
    capacity = gauges["pool_capacity"]
    scale_to = max(1, capacity if capacity is not None else max(gauges["pool_size"], out + idle))
    unit = _BAR_WIDTH / scale_to
    return {
        "out_width": round(min(out, scale_to) * unit, 1),
        "idle_x": round(min(out, scale_to) * unit, 1),
        "idle_width": round(max(0, min(out + idle, scale_to) - out) * unit, 1),
        "size_x": round(min(gauges["pool_size"], scale_to) * unit, 1),
        "scale_to": scale_to,
    }


def _histogram(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    biggest = max((row["count"] for row in rows), default=0) or 1
    return [{**row, "width": round(100.0 * row["count"] / biggest, 1)} for row in rows]


def _view_model(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document plus what the template draws (bars, polylines), computed here so the
    template stays declarative."""
    databases = []
    for entry in document["databases"]:
        pools = []
        capacity = 0
        for pool in entry["pools"]:
            pools.append({**pool, "bar": _bar(pool["gauges"]),
                          "wait_rows": _histogram(pool["wait_histogram"]),
                          "hold_rows": _histogram(pool["hold_histogram"])})
            capacity += pool["gauges"]["pool_capacity"] or pool["gauges"]["pool_size"]
        points = data.series_for(document, entry["alias"])
        out = [point["checked_out"] for point in points]
        waiting = [point["waiting"] for point in points]
        wait_ms = [point["wait_ms"] for point in points]
        top = max([capacity, 1, *out, *waiting])
        wait_top = max([1.0, *wait_ms])
        databases.append({**entry, "pools": pools, "series": {
            "points": len(points),
            "window": _duration_text(max(0, len(points) - 1) * data.SAMPLE_INTERVAL_S),
            "out_line": _polyline(out, top), "waiting_line": _polyline(waiting, top),
            "wait_line": _polyline(wait_ms, wait_top), "top": top,
            "wait_top": round(wait_top, 1),
            "out_now": out[-1] if out else 0, "out_max": max(out, default=0),
            "waiting_now": waiting[-1] if waiting else 0, "waiting_max": max(waiting, default=0),
            "wait_now": wait_ms[-1] if wait_ms else 0.0, "wait_max": max(wait_ms, default=0.0),
        }})
    return {**document, "databases": databases,
            "chart": {"width": _CHART_WIDTH, "height": _CHART_HEIGHT, "bar": _BAR_WIDTH}}


def _body(document: Mapping[str, Any], request: HttpRequest) -> str:
    return render_to_string("django_poolkit/dashboard/body.html",
                            {"doc": _view_model(document)}, request=request)


def _index(request: HttpRequest) -> HttpResponse:
    """The page: every section rendered on the server; a small script refreshes it."""
    document = data.collect()
    admin_index = _admin_index()
    context: dict[str, Any] = {
        "doc": _view_model(document),
        "refresh": _refresh(request),
        "admin_index": admin_index,
        "base_template": ("admin/base_site.html" if admin_index
                          else "django_poolkit/dashboard/base.html"),
        "title": "Connection pools",
    }
    if admin_index is not None:
        from django.contrib import admin

        # Not admin.site.each_context(): its app list asks the database for the user's
        # permissions, through a pool that may be the saturated one this page is about.
        site = admin.site
        context.update({
            "site_title": site.site_title, "site_header": site.site_header,
            "site_url": site.site_url, "has_permission": True, "available_apps": [],
            "is_popup": False, "is_nav_sidebar_enabled": False,
        })
    return render(request, "django_poolkit/dashboard/index.html", context)


def _data(request: HttpRequest) -> HttpResponse:
    """The same figures as JSON (``data``), plus the rendered sections (``html``)."""
    document = data.collect()
    body = json.dumps({"data": document, "html": _body(document, request)},
                      cls=DjangoJSONEncoder)
    return HttpResponse(body, content_type="application/json")


index = _dashboard_view(_index, "index", json_answer=False)
data_view = _dashboard_view(_data, "data_view", json_answer=True)
