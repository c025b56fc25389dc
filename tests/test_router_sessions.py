"""read_session() and write_session(), sync and async, follow the ORM's routing and pins."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from django_poolkit import pinning, read_session, use_primary, write_session
from django_poolkit.routing.sessions import resolve

from .helpers.routing import DBS, replica_paused

pytestmark = pytest.mark.django_db(databases=DBS, transaction=True)

WHERE = text("SELECT pg_is_in_recovery(), current_database()")


def test_read_session_runs_on_the_replica(route):
    route()
    with pinning.scope(), read_session() as session:
        in_recovery, database = session.execute(WHERE).one()
    assert in_recovery is True
    assert database.startswith("test_")


def test_write_session_commits_on_the_primary_and_pins(route):
    route()
    with pinning.scope():
        with write_session() as session:
            assert session.execute(WHERE).one()[0] is False
            session.execute(text("INSERT INTO demo_note (title, body, created_at) "
                                 "VALUES ('from sqlalchemy', '', now())"))
        # The write pinned this scope: reads see it at once, on the primary.
        with read_session() as session:
            assert session.execute(WHERE).one()[0] is False
            assert session.execute(text("SELECT title FROM demo_note")).scalars().all() == [
                "from sqlalchemy"]
        from testproject.demo.models import Note

        assert [note.title for note in Note.objects.all()] == ["from sqlalchemy"]


def test_write_session_rolls_back_on_error(route):
    route()
    def fail_after_insert() -> None:
        with write_session() as session:
            session.execute(text("INSERT INTO demo_note (title, body, created_at) "
                                 "VALUES ('lost', '', now())"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_after_insert()
    with use_primary(), read_session() as session:
        assert session.execute(text("SELECT count(*) FROM demo_note")).scalar() == 0


def test_use_primary_and_names(route):
    route()
    with pinning.scope():
        assert resolve("read", None) == "replica"
        assert resolve("read", "main") == "replica"
        assert resolve("read", "replica") == "replica"  # an alias names its cluster
        with use_primary():
            assert resolve("read", "main") == "default"


def test_without_routing_sessions_use_the_alias(settings):
    settings.POOLKIT = {}
    assert resolve("read", None) == "default"
    assert resolve("write", "replica") == "replica"


async def test_async_sessions_follow_the_same_routing(route):
    from asgiref.sync import sync_to_async

    await sync_to_async(route)(max_lag=3600, pin_seconds=300)
    with replica_paused():
        with pinning.scope():
            async with read_session() as session:
                assert (await session.execute(WHERE)).one()[0] is True
            async with write_session() as session:
                await session.execute(text(
                    "INSERT INTO demo_note (title, body, created_at) "
                    "VALUES ('async', '', now())"))
            async with read_session() as session:  # pinned by the write
                assert (await session.execute(WHERE)).one()[0] is False
                titles = (await session.execute(text("SELECT title FROM demo_note")))
                assert titles.scalars().all() == ["async"]
        with pinning.scope():  # another request: the paused replica has not seen it
            async with read_session() as session:
                assert (await session.execute(WHERE)).one()[0] is True
                count = await session.execute(text("SELECT count(*) FROM demo_note"))
                assert count.scalar() == 0
    from django_poolkit import adispose_all

    await adispose_all()
