"""The bench views: one primary-key SELECT, and three queries (a primary-key SELECT, a
range of ten rows, a count over an indexed group); the primary-key view async, through
Django's async ORM and through poolkit's async engine (the CPU benchmark's ASGI part)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from sqlalchemy import text

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


async def apk(request: HttpRequest) -> HttpResponse:
    """The primary-key view, async, through Django's async ORM (``aget``: the query runs in
    a worker thread through ``sync_to_async``, whatever the backend)."""
    item = await Item.objects.aget(pk=pick_pk())
    return HttpResponse(item.name, content_type="text/plain")


async def apk_engine(request: HttpRequest) -> HttpResponse:
    """The primary-key view, async, through poolkit's async engine (no thread hop)."""
    from django_poolkit import get_async_engine

    async with get_async_engine().connect() as connection:
        result = await connection.execute(_PK_TEXT, {"pk": pick_pk()})
        row = result.one()
    return HttpResponse(row.name, content_type="text/plain")


_PK_TEXT = text('SELECT "id", "name", "group" FROM "bench_item" WHERE "id" = :pk LIMIT 21')
