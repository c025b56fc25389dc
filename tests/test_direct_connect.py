"""Connections poolkit opens outside the pools (health probes, server queries) take their
parameters from the same source as the pools, URL query parameters included."""

from __future__ import annotations

import os
from typing import Any

import pytest

from django_poolkit.conf import get_settings
from django_poolkit.engines.params import connection_spec, direct_connect_args
from django_poolkit.exceptions import ServerUnreachable
from django_poolkit.ops.serverinfo import read_limits

URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres").replace(
    "postgres://", "postgresql://", 1)


def _engine(settings: Any, query: str) -> str:
    settings.POOLKIT = {"ENGINES": {"ops_probe": {"url": f"{URL}?{query}"}}}
    return "ops_probe"


def test_engine_url_query_parameters_reach_the_direct_connection(settings):
    alias = _engine(settings, "sslmode=disable&target_session_attrs=any")
    params = direct_connect_args(alias, connection_spec(alias, get_settings().pools[alias]),
                                 purpose="ops", timeout=1.0)
    assert params["sslmode"] == "disable"
    assert params["target_session_attrs"] == "any"
    assert params["application_name"] == f"poolkit-ops:{alias}:{os.getpid()}"
    assert params["connect_timeout"] == 2
    assert read_limits(alias).max_connections > 0


def test_a_required_ssl_the_server_lacks_is_not_dropped(settings):
    # The test server runs without SSL: the query parameter must make the connection fail.
    alias = _engine(settings, "sslmode=require")
    with pytest.raises(ServerUnreachable):
        read_limits(alias)
