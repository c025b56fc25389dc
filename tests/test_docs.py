"""The README is the configuration reference: it must name every setting with its default,
every preset, formula and check id."""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import pytest

from django_poolkit.conf import KNOBS, TOP_LEVEL_KEYS
from django_poolkit.ops import sizing

README = (Path(__file__).resolve().parent.parent / "README.rst").read_text()


@pytest.mark.parametrize("name", list(KNOBS))
def test_every_pool_setting_is_documented_with_its_default(name):
    default = KNOBS[name].default
    shown = '"' + default + '"' if isinstance(default, str) else repr(default)
    row = re.search(rf"\* - ``{name}``\n\s+- ``(.*?)``", README)
    assert row, f"{name} missing from the README's settings table"
    assert row.group(1) == shown


@pytest.mark.parametrize("key", list(TOP_LEVEL_KEYS))
def test_every_top_level_key_is_documented(key):
    assert f'"{key}"' in README


@pytest.mark.parametrize("name", [*sizing.PRESETS, *sizing.SIZING_FORMULAS])
def test_every_preset_and_formula_is_documented(name):
    assert f"``{name}``" in README


def test_every_check_id_is_documented():
    source = (Path(__file__).resolve().parent.parent / "django_poolkit").rglob("*.py")
    pattern = re.compile(r"poolkit\.[EW]\d{3}")
    ids = {match for path in source for match in pattern.findall(path.read_text())}
    assert ids
    missing = sorted(check_id for check_id in ids if f"``{check_id}``" not in README)
    assert missing == []


@pytest.mark.parametrize("name", ["README.rst", "CHANGELOG.rst", "docs/services.rst",
                                  "docs/reliability.rst", "docs/client-timeout.rst",
                                  "docs/resend.rst", "docs/dashboard.rst",
                                  "docs/security.rst"])
def test_the_documents_render_without_a_warning(name):
    # PyPI renders the README with docutils and shows raw text if it has an error.
    text = (Path(__file__).resolve().parent.parent / name).read_text()
    warnings = io.StringIO()
    docutils.core.publish_string(
        text, writer="html",
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5})
    assert warnings.getvalue() == ""
