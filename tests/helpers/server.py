"""Reaching the real PostgreSQL outside every pool: the libpq DSN of a Django alias and what
``pg_stat_activity`` shows."""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections


def alias_dsn(alias: str = "default", dbname: str | None = None) -> str:
    """A libpq DSN of the server behind the Django alias ``alias`` (its database, or
    ``dbname``)."""
    settings_dict = connections.settings[alias]
    parts = {
        "host": settings_dict["HOST"] or "127.0.0.1",
        "port": settings_dict["PORT"] or 5432,
        "user": settings_dict["USER"] or "postgres",
        "dbname": dbname or settings_dict["NAME"],
    }
    if settings_dict["PASSWORD"]:
        parts["password"] = settings_dict["PASSWORD"]
    return " ".join(f"{key}={value}" for key, value in parts.items())


def server_connections(admin: psycopg.Connection[Any], application_name_like: str) -> list[Any]:
    """Rows of ``pg_stat_activity`` whose application_name matches a LIKE pattern."""
    return admin.execute(
        "SELECT pid, datname, application_name, state FROM pg_stat_activity "
        "WHERE application_name LIKE %s", (application_name_like,)
    ).fetchall()
