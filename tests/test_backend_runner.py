"""Django's own test runner on the pooled backend, for real, in a subprocess: it creates,
clones (``--parallel``), flushes and destroys test databases while pools hold connections."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The runner's database, named after this run's own (DATABASE_URL): runs of the suite that
#: share one server (several checkouts, CI jobs) never see each other's clones.
DATABASE = (urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "poolkit") + "_runner"

PROBE = '''
from django.db import connection
from django.test import TestCase, TransactionTestCase
from sqlalchemy import text

from django_poolkit import get_engine
from testproject.demo.models import Note


class OrmAndEngine(TestCase):
    def test_both_talk_to_the_test_database(self):
        Note.objects.create(title="x")
        name = connection.settings_dict["NAME"]
        self.assertTrue(name.startswith("test_"), name)
        with get_engine().connect() as sa:
            self.assertEqual(sa.execute(text("SELECT current_database()")).scalar(), name)
            # SQLAlchemy shares the ORM's connection, so it runs inside the TestCase's
            # transaction: it sees the test's row, and the rollback takes its work too.
            self.assertEqual(sa.execute(text("SELECT count(*) FROM demo_note")).scalar(), 1)


class Flushed(TransactionTestCase):
    def test_a(self):
        Note.objects.create(title="a")
        with get_engine().connect() as sa:
            self.assertEqual(sa.execute(text("SELECT count(*) FROM demo_note")).scalar(), 1)

    def test_b(self):
        Note.objects.create(title="b")
        self.assertEqual(Note.objects.count(), 1)


class Engine(TransactionTestCase):
    def test_engine_writes_are_flushed(self):
        with get_engine().begin() as sa:
            sa.execute(text("INSERT INTO demo_note (title, body, created_at) "
                            "VALUES ('sa', '', now())"))
        self.assertEqual(Note.objects.get().title, "sa")
'''


def _databases(admin) -> list[str]:
    return [row[0] for row in admin.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
        (f"test_{DATABASE}%",))]


@pytest.mark.parametrize("extra", [[], ["--parallel", "2"]], ids=["serial", "parallel-2"])
def test_manage_py_test_creates_clones_flushes_and_destroys(tmp_path, admin, extra):
    (tmp_path / "poolkit_runner_probe.py").write_text(textwrap.dedent(PROBE))
    environment = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "testproject.settings_test",
    }
    environment.pop("REPLICA_URLS", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "test", "poolkit_runner_probe", "--noinput", "-v", "2",
         *extra],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Ran 4 tests" in output
    assert "OK" in output
    if extra:
        assert "Cloning test database for alias 'default'" in output
    assert "Destroying test database for alias 'default'" in output
    assert "being accessed by other users" not in output
    assert _databases(admin) == []
