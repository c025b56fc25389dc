"""The two bench views: one primary-key SELECT, and three queries (a primary-key SELECT, a
range of ten rows, a count over an indexed group)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from .models import Item
from .queries import pick_group, pick_pk


def pk(request: HttpRequest) -> HttpResponse:
    """One query: ``Item.objects.get(pk=...)``."""
    item = Item.objects.get(pk=pick_pk())
    return HttpResponse(item.name, content_type="text/plain")


def three(request: HttpRequest) -> HttpResponse:
    """Three queries, each its own round trip (autocommit, no transaction around them)."""
    start = pick_pk()
    item = Item.objects.get(pk=start)
    names = [row.name for row in Item.objects.filter(pk__gte=start).order_by("pk")[:10]]
    count = Item.objects.filter(group=pick_group()).count()
    return HttpResponse(f"{item.name} {len(names)} {count}", content_type="text/plain")
