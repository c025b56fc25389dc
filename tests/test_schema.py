"""The one validation kit: every settings section refuses non-finite numbers (inf, nan) with
the same message shape (key path, value, what is accepted)."""

from __future__ import annotations

import math

import pytest

from django_poolkit import conf

DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"}}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize(("section", "path", "check_id"), [
    ({"DEFAULTS": {"pool_timeout": "X"}}, 'POOLKIT["DEFAULTS"]["pool_timeout"]', "poolkit.E003"),
    ({"ROUTING": {"max_lag": "X", "CLUSTERS": {"main": {"primary": "default"}}}},
     'POOLKIT["ROUTING"]["max_lag"]', "poolkit.E022"),
    ({"HEALTH": {"timeout": "X"}}, 'POOLKIT["HEALTH"]["timeout"]', "poolkit.E032"),
    ({"DEPLOYMENT": {"queries_per_request": "X"}},
     'POOLKIT["DEPLOYMENT"]["queries_per_request"]', "poolkit.E042"),
])
def test_non_finite_numbers_are_refused_everywhere(section, path, check_id, value):
    top, = section
    inner = {key: (value if item == "X" else item) for key, item in section[top].items()}
    _, problems = conf.build_settings({top: inner}, DATABASES, {})
    assert [(p.path, p.check_id) for p in problems] == [(path, check_id)]
    assert problems[0].message.startswith("must be ")
    assert problems[0].message.endswith(f"got {value!r}")
