"""The demo project's views over the real database: ORM writes, engine reads, pool figures."""

from __future__ import annotations

import pytest
from django.db import connections
from django.urls import reverse

from testproject.demo.models import Note

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_then_list_through_orm_and_engine(client):
    response = client.post(reverse("demo:note-list"), {"title": "first", "body": "hello"})
    assert response.status_code == 302
    assert Note.objects.get().title == "first"

    page = client.get(reverse("demo:note-list"))
    assert page.status_code == 200
    assert b"first" in page.content

    through_engine = client.get(reverse("demo:note-list-sqlalchemy")).json()
    assert [note["title"] for note in through_engine["notes"]] == ["first"]

    # The test's own ORM connection comes from the same pool (pooled backend): return it.
    connections.close_all()
    pools = client.get(reverse("demo:pools")).json()["pools"]
    default = next(pool for pool in pools if pool["alias"] == "default")
    assert default["built"] is True
    assert default["counters"]["checkouts"] >= 1
    assert default["gauges"]["pool_checked_out"] == 0


def test_invalid_note_is_not_saved(client):
    response = client.post(reverse("demo:note-list"), {"title": ""})
    assert response.status_code == 200
    assert Note.objects.count() == 0
