"""The Prometheus rules shipped in the package (django_poolkit/contrib/prometheus/): Debian's
``promtool`` checks and unit-tests them (tests/prometheus/poolkit_rules_test.yml), and every
poolkit metric they use is one django_poolkit.metrics really exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

import django_poolkit.contrib
from django_poolkit import get_engine

RULES = Path(django_poolkit.contrib.__file__).parent / "prometheus" / "poolkit.rules.yml"
UNIT_TESTS = Path(__file__).parent / "prometheus" / "poolkit_rules_test.yml"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run scripts/ensure-prometheus (Debian's prometheus)")
    return found


def test_promtool_checks_the_rules():
    result = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 18 rules found" in result.stdout


def test_promtool_unit_tests_pass():
    # promtool reads rule_files relative to the test file; it writes nothing.
    result = subprocess.run([_promtool(), "test", "rules", UNIT_TESTS.name],
                            cwd=UNIT_TESTS.parent, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_every_poolkit_metric_of_the_rules_is_exported():
    from prometheus_client import generate_latest

    from django_poolkit import metrics

    metrics.install()
    with get_engine("default").connect() as connection:
        connection.execute(text("SELECT 1"))
    exposition = generate_latest(metrics.registry()).decode()
    types = dict(re.findall(r"^# TYPE (poolkit_\w+) (\w+)", exposition, re.MULTILINE))
    samples = set(re.findall(r"^(poolkit_\w+)[{ ]", exposition, re.MULTILINE))
    used = set(re.findall(r"\bpoolkit_[a-z_]+", RULES.read_text()))
    for name in sorted(used):
        # A family with no sample yet (no replica lag measured here) still has its TYPE.
        assert name in samples or name in types, f"{name} is not exported"
        if name.endswith("_total"):
            assert types.get(name, types.get(name.removesuffix("_total"))) == "counter", name
        if name.endswith(("_bucket", "_sum", "_count")):
            assert types[re.sub(r"_(bucket|sum|count)$", "", name)] == "histogram", name
    assert {"poolkit_pool_checked_out", "poolkit_timeouts_total",
            "poolkit_checkout_wait_seconds_bucket"} <= samples
    assert "poolkit_replica_lag_seconds" in types
