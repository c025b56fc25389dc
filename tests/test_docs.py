"""The manual cannot drift from the code: the configuration page names every setting with its
default, every top-level key, preset and formula; the checks page names every check id; the
README renders on PyPI. (scripts/docs builds the whole manual with warnings as errors.)"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import docutils.core
import pytest

from django_poolkit.conf import KNOBS, TOP_LEVEL_KEYS
from django_poolkit.ops import sizing

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.rst").read_text()
CHECKS = (ROOT / "docs" / "checks.rst").read_text()


@pytest.mark.parametrize("name", list(KNOBS))
def test_every_pool_setting_is_documented_with_its_default_and_accepted_values(name):
    knob = KNOBS[name]
    shown = '"' + knob.default + '"' if isinstance(knob.default, str) else repr(knob.default)
    row = re.search(rf"\* - ``{name}``\n\s+- ``(.*?)``\n\s+- (.*?)\n\s+- ", CONFIGURATION,
                    re.S)
    assert row, f"{name} missing from the settings table of docs/configuration.rst"
    assert row.group(1) == shown
    assert " ".join(row.group(2).replace("``", "").split()) == knob.accepted


@pytest.mark.parametrize("key", list(TOP_LEVEL_KEYS))
def test_every_top_level_key_is_documented(key):
    assert f'"{key}"' in CONFIGURATION


@pytest.mark.parametrize("name", [*sizing.PRESETS, *sizing.SIZING_FORMULAS])
def test_every_preset_and_formula_is_documented(name):
    assert f"``{name}``" in CONFIGURATION


def test_every_check_id_is_documented():
    source = (ROOT / "django_poolkit").rglob("*.py")
    pattern = re.compile(r"poolkit\.[EW]\d{3}")
    ids = {match for path in source for match in pattern.findall(path.read_text())}
    assert ids
    missing = sorted(check_id for check_id in ids if f"``{check_id}``" not in CHECKS)
    assert missing == []


@pytest.mark.parametrize("name", ["README.rst", "CHANGELOG.rst"])
def test_the_documents_render_without_a_warning(name):
    # PyPI renders the README with docutils and shows raw text if it has an error.
    text = (ROOT / name).read_text()
    warnings = io.StringIO()
    docutils.core.publish_string(
        text, writer="html",
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5})
    assert warnings.getvalue() == ""


def test_the_replica_snapshots_shown_are_what_replica_state_returns():
    """docs/replicas.rst shows ``snapshot()`` (a ClusterStatus per cluster) and
    ``replica(alias).as_dict()``: the attributes and keys it shows are those of the classes."""
    from dataclasses import fields

    from django_poolkit.routing.status import ClusterStatus, ReplicaStatus

    text = (ROOT / "docs" / "replicas.rst").read_text()
    session = text[text.index("    >>> [main] = replica_state.snapshot()"):]
    session = session[: session.index("\n\n")]
    cluster = {*(field.name for field in fields(ClusterStatus)), "degraded"}
    replica = {field.name for field in fields(ReplicaStatus)}
    assert set(re.findall(r"\bmain\.(\w+)", session)) - {"replicas"} <= cluster
    assert "main.replicas[0]" in session
    assert set(re.findall(r"\breplica1\.(\w+)", session)) <= replica
    shown = text[text.index('``replica_state.replica("replica1").as_dict()``:'):]
    shown = shown[shown.index("{"): shown.index("}") + 1]
    assert list(json.loads(shown)) == [field.name for field in fields(ReplicaStatus)]
