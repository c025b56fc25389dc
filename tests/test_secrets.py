"""No password in reprs, URLs, log lines, error messages or check output: tested with a
sentinel password that must appear nowhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import sqlalchemy.exc
from django.db import connections
from sqlalchemy import text

from django_poolkit import conf, get_engine, pool_stats
from django_poolkit.engines import engine_registry

SENTINEL = "s3ntinel-PW-7c41d"

pytestmark = pytest.mark.django_db(transaction=True)


def _everything(engine) -> str:
    pool_settings = conf.get_settings().pools
    return "\n".join([
        repr(engine), str(engine.url), repr(engine.url), repr(engine.pool),
        repr(engine_registry), repr(pool_settings), repr(pool_stats()),
        str(pool_stats().as_dict()),
    ])


def test_password_of_a_databases_alias_never_shows(caplog):
    settings_dict = connections.settings["default"]
    settings_dict["PASSWORD"] = SENTINEL  # the local server trusts 127.0.0.1: it is ignored
    try:
        with caplog.at_level(logging.DEBUG):
            engine = get_engine()
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            captured = _everything(engine)
            engine_registry.dispose()
    finally:
        settings_dict["PASSWORD"] = ""
    assert SENTINEL not in captured
    assert SENTINEL not in caplog.text
    assert "disposed sync engine" in caplog.text  # the log was really captured


def test_password_in_an_engine_url_never_shows_even_when_connecting_fails(settings, caplog):
    settings.POOLKIT = {"ENGINES": {"vault": {
        "url": f"postgresql://postgres:{SENTINEL}@127.0.0.1:1/postgres", "connect_timeout": 2}}}
    with caplog.at_level(logging.DEBUG):
        engine = get_engine("vault")
        with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
            engine.connect()
    chain = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(f"{type(error).__name__}: {error!s} {error!r}")
        error = error.__cause__ or error.__context__
    assert SENTINEL not in "\n".join(chain)
    assert SENTINEL not in _everything(engine)
    assert SENTINEL not in caplog.text


def test_invalid_engine_url_error_does_not_echo_the_url(settings):
    settings.POOLKIT = {"ENGINES": {"broken": {"url": f"mysql://u:{SENTINEL}@h/db"}}}
    with pytest.raises(conf.PoolkitConfigurationError) as raised:
        conf.get_settings()
    assert SENTINEL not in str(raised.value)
    assert 'POOLKIT["ENGINES"]["broken"]["url"]' in str(raised.value)


def test_manage_py_check_output_never_shows_the_password(tmp_path):
    settings_file = tmp_path / "sentinel_settings.py"
    settings_file.write_text(
        "from testproject.settings_test import *\n"
        f"POOLKIT = {{'ENGINES': {{'x': {{'url': 'postgresql://u:{SENTINEL}@h/db', "
        "'pool_sise': 3}}}\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "sentinel_settings",
             "PYTHONPATH": f"{tmp_path}:{os.getcwd()}"}, check=False)
    assert result.returncode != 0
    assert "poolkit.E002" in result.stderr
    assert SENTINEL not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
