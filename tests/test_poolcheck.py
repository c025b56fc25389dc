"""``manage.py poolcheck``: the views' probes, exit codes and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from .helpers.health import HEALTHY_TIMEOUT, TOKEN, TOKEN_HEADER, poolkit
from .helpers.tcpproxy import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

ROOT = Path(__file__).resolve().parent.parent


def poolcheck(*args: str) -> str:
    out = StringIO()
    call_command("poolcheck", *args, stdout=out)
    return out.getvalue()


@override_settings(POOLKIT=poolkit(databases=["default"], timeout=HEALTHY_TIMEOUT))
def test_healthy_prints_a_table_and_exits_0() -> None:
    lines = poolcheck().splitlines()
    assert lines[0].split() == ["ALIAS", "STATUS", "ROLE", "LATENCY", "LAG", "POOL", "DETAIL"]
    assert lines[1].split()[:3] == ["default", "healthy", "primary"]
    assert lines[-1] == "status: healthy"


@override_settings(POOLKIT=poolkit(databases=["default"], timeout=HEALTHY_TIMEOUT))
def test_json_is_the_views_detailed_body(client: Client) -> None:
    from_command = json.loads(poolcheck("--format", "json"))
    from_view = client.get("/health/db/", headers={TOKEN_HEADER: TOKEN}).json()
    assert from_command["status"] == from_view["status"] == "healthy"
    assert set(from_command) == set(from_view)
    assert set(from_command["databases"]["default"]) == set(from_view["databases"]["default"])


def test_unhealthy_exits_1_degraded_exits_0_unless_strict(
        add_alias: Callable[..., str]) -> None:
    add_alias("gone", PORT=str(free_port()))
    with override_settings(POOLKIT=poolkit(databases=["default", "gone"])):
        assert "status: degraded" in poolcheck()
        with pytest.raises(CommandError, match="degraded") as raised:
            poolcheck("--strict")
        assert raised.value.returncode == 1
        with pytest.raises(CommandError, match="unhealthy") as raised:
            poolcheck("--database", "gone")
        assert raised.value.returncode == 1
    with override_settings(POOLKIT=poolkit(databases=["gone"], primary="gone")), \
            pytest.raises(CommandError) as raised:
        poolcheck("--format", "json")
    assert raised.value.returncode == 1


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(CommandError, match="unknown database alias 'nope'") as raised:
        poolcheck("--database", "nope")
    assert raised.value.returncode == 2
    with pytest.raises(CommandError, match="--timeout") as raised:
        poolcheck("--timeout", "0")
    assert raised.value.returncode == 2


def test_the_process_exit_status() -> None:
    """A container health check sees the exit status of a real process."""
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings_test",
                   "DATABASE_URL": _url(settings.DATABASES["default"]["NAME"])}
    healthy = subprocess.run([sys.executable, "manage.py", "poolcheck", "--database",
                              "default"], cwd=ROOT, env=environment, capture_output=True,
                             text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    environment["DATABASE_URL"] = _url("poolkit_no_such_database")
    down = subprocess.run([sys.executable, "manage.py", "poolcheck", "--database", "default"],
                          cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=60)
    assert down.returncode == 1
    assert "database or role does not exist" in down.stdout
    assert "CommandError: databases are unhealthy" in down.stderr


def _url(name: str) -> str:
    entry = settings.DATABASES["default"]
    return f"postgres://{entry['USER'] or 'postgres'}@{entry['HOST'] or '127.0.0.1'}:" \
           f"{entry['PORT'] or 5432}/{name}"


def test_a_configuration_error_is_reported_as_such(settings) -> None:
    settings.POOLKIT = {"DATABASES": {"default": {"pool_sise": 20}}}
    with pytest.raises(CommandError) as raised:
        call_command("poolcheck", stdout=StringIO())
    assert raised.value.returncode == 2
    text = str(raised.value)
    assert text.startswith("configuration error: ")
    assert 'did you mean "pool_size"?' in text
    assert "unreachable" not in text
