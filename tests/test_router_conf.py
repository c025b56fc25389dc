"""POOLKIT["ROUTING"]: parsing, defaults and every problem reported with its key path."""

from __future__ import annotations

from typing import Any

import pytest

from django_poolkit.conf import build_settings
from django_poolkit.exceptions import Problem
from django_poolkit.routing.settings import RoutingSettings

PG = "django.db.backends.postgresql"
DATABASES: dict[str, dict[str, Any]] = {
    "default": {"ENGINE": PG, "NAME": "app"},
    "replica1": {"ENGINE": PG, "NAME": "app"},
    "replica2": {"ENGINE": PG, "NAME": "app"},
    "events": {"ENGINE": "django_poolkit.db.backends.postgresql", "NAME": "events"},
    "events_ro": {"ENGINE": PG, "NAME": "events"},
    "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}


def routing(section: Any) -> tuple[RoutingSettings | None, list[Problem]]:
    built, problems = build_settings({"ROUTING": section}, DATABASES, {})
    return (built.sections["ROUTING"] if built else None), problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


def test_absent_section_means_no_routing():
    built, problems = build_settings({}, DATABASES, {})
    assert problems == []
    assert built is not None
    assert built.sections["ROUTING"] is None


def test_one_cluster_with_defaults():
    found, problems = routing({"CLUSTERS": {"main": {"primary": "default",
                                                     "replicas": ["replica1", "replica2"]}}})
    assert problems == []
    assert found is not None
    main = found.clusters["main"]
    assert main.aliases == ("default", "replica1", "replica2")
    assert (main.strategy, main.max_lag, main.readmit_lag, main.fallback) == (
        "round_robin", 5.0, 2.5, "primary")
    assert (main.max_lag_bytes, main.readmit_lag_bytes) == (None, None)
    assert found.default_cluster == "main"
    assert (found.pin_mode, found.pin_seconds, found.probe_interval) == ("lsn", 15.0, 1.0)
    assert found.cluster_of_alias("replica2") is main
    assert found.cluster_of_model("anything", "Model") is main


def test_several_clusters_options_and_weights():
    found, problems = routing({
        "max_lag": 10, "fallback": "raise", "pin_mode": "time", "probe_interval": None,
        "CLUSTERS": {
            "main": {"primary": "default", "replicas": ["replica1"]},
            "events": {"primary": "events", "replicas": {"events_ro": {"weight": 3}},
                       "apps": ["tracking", "shop.Order"], "strategy": "weighted",
                       "max_lag": 2, "max_lag_bytes": 1000, "fallback": "primary"},
        },
    })
    assert problems == []
    assert found is not None
    main, events = found.clusters["main"], found.clusters["events"]
    assert (main.max_lag, main.readmit_lag, main.fallback) == (10.0, 5.0, "raise")
    assert (events.max_lag, events.readmit_lag, events.fallback) == (2.0, 1.0, "primary")
    assert (events.max_lag_bytes, events.readmit_lag_bytes) == (1000, 500)
    assert events.replicas[0].weight == 3.0
    assert found.pin_mode == "time"
    assert found.probe_interval is None
    assert found.default_cluster == "main"
    assert found.cluster_of_model("tracking", "Visit") is events
    assert found.cluster_of_model("shop", "Order") is events
    assert found.cluster_of_model("shop", "Cart") is main


def test_unknown_keys_get_did_you_mean_with_paths():
    _, problems = routing({"max_lgg": 3, "CLUSTERS": {"main": {
        "primary": "default", "replica": ["replica1"], "replicas": {"replica1": {"wieght": 2}}}}})
    assert [(p.path, p.message, p.check_id) for p in problems] == [
        ('POOLKIT["ROUTING"]["max_lgg"]', 'unknown key; did you mean "max_lag"?', "poolkit.E021"),
        ('POOLKIT["ROUTING"]["CLUSTERS"]["main"]["replica"]',
         'unknown key; did you mean "replicas"?', "poolkit.E021"),
        ('POOLKIT["ROUTING"]["CLUSTERS"]["main"]["replicas"]["replica1"]["wieght"]',
         'unknown key; did you mean "weight"?', "poolkit.E021"),
    ]


def test_bad_values_state_the_rule():
    _, problems = routing({"strategy": "round-robin", "pin_seconds": 0, "sticky": "yes",
                           "CLUSTERS": {"main": {"primary": "default",
                                                 "replicas": {"replica1": {"weight": -1}}}}})
    assert [(p.path, p.message, p.check_id) for p in problems] == [
        ('POOLKIT["ROUTING"]["strategy"]', 'must be "round_robin", "random" or "weighted", got '
         "'round-robin'; did you mean \"round_robin\"?", "poolkit.E022"),
        ('POOLKIT["ROUTING"]["pin_seconds"]', "must be a number of seconds >= 1 and <= 86400 "
         "(the signed token's timestamp counts whole seconds), got 0", "poolkit.E022"),
        ('POOLKIT["ROUTING"]["sticky"]', "must be True or False, got 'yes'", "poolkit.E022"),
        ('POOLKIT["ROUTING"]["CLUSTERS"]["main"]["replicas"]["replica1"]["weight"]',
         "must be a number > 0 and <= 1000000, got -1", "poolkit.E022"),
    ]


def test_unknown_alias_has_did_you_mean():
    problem = only(routing({"CLUSTERS": {"main": {"primary": "default",
                                                  "replicas": ["replcia1"]}}})[1])
    assert problem.path == 'POOLKIT["ROUTING"]["CLUSTERS"]["main"]["replicas"]["replcia1"]'
    assert problem.message == ('names the alias "replcia1", which settings.DATABASES lacks; '
                               'did you mean "replica1"?')
    assert problem.check_id == "poolkit.E023"


def test_an_alias_in_two_roles_is_an_error():
    _, problems = routing({"CLUSTERS": {
        "main": {"primary": "default", "replicas": ["replica1", "default"]},
        "other": {"primary": "events", "replicas": ["replica1"], "apps": ["x"]},
    }})
    assert [(p.message, p.check_id) for p in problems] == [
        ('uses "default" as replica, but it is already the primary of cluster "main"',
         "poolkit.E024"),
        ('uses "replica1" as replica, but it is already the replica of cluster "main"',
         "poolkit.E024"),
    ]


def test_conflicts():
    _, problems = routing({"CLUSTERS": {
        "main": {"primary": "default", "max_lag": 1, "readmit_lag": 2,
                 "readmit_lag_bytes": 10},
        "events": {"primary": "events", "max_lag_bytes": 100, "readmit_lag_bytes": 200},
    }})
    assert [(p.path, p.check_id) for p in problems] == [
        ('POOLKIT["ROUTING"]["CLUSTERS"]["main"]["readmit_lag"]', "poolkit.E025"),
        ('POOLKIT["ROUTING"]["CLUSTERS"]["main"]["readmit_lag_bytes"]', "poolkit.E025"),
        ('POOLKIT["ROUTING"]["CLUSTERS"]["events"]["readmit_lag_bytes"]', "poolkit.E025"),
        ('POOLKIT["ROUTING"]["CLUSTERS"]', "poolkit.E025"),  # two clusters without apps
    ]
    assert problems[-1].message == 'has several clusters without "apps": "main", "events"'


def test_the_same_app_in_two_clusters():
    problem = only(routing({"CLUSTERS": {
        "main": {"primary": "default", "apps": ["shop"]},
        "events": {"primary": "events", "apps": ["Shop"]},
    }})[1])
    assert (problem.message, problem.check_id) == (
        'lists "shop", already routed to cluster "main"', "poolkit.E025")


def test_members_must_be_postgresql():
    problem = only(routing({"CLUSTERS": {"main": {"primary": "lite"}}})[1])
    assert (problem.path, problem.check_id) == (
        'POOLKIT["ROUTING"]["CLUSTERS"]["main"]["primary"]', "poolkit.E026")


@pytest.mark.parametrize(("section", "path"), [
    ([], 'POOLKIT["ROUTING"]'),
    ({}, 'POOLKIT["ROUTING"]["CLUSTERS"]'),
    ({"CLUSTERS": {"main": "default"}}, 'POOLKIT["ROUTING"]["CLUSTERS"]["main"]'),
    ({"CLUSTERS": {"main": {"replicas": []}}},
     'POOLKIT["ROUTING"]["CLUSTERS"]["main"]["primary"]'),
    ({"CLUSTERS": {"main": {"primary": "default", "replicas": "replica1"}}},
     'POOLKIT["ROUTING"]["CLUSTERS"]["main"]["replicas"]'),
])
def test_wrong_types(section, path):
    problem = only(routing(section)[1])
    assert (problem.path, problem.check_id) == (path, "poolkit.E020")


def test_manage_py_check_reports_routing_problems(settings):
    from django.core.checks import Error

    from django_poolkit.checks import check_poolkit_settings

    settings.POOLKIT = {"ROUTING": {"CLUSTERS": {"main": {"primary": "defualt"}}}}
    assert check_poolkit_settings() == [Error(
        'POOLKIT["ROUTING"]["CLUSTERS"]["main"]["primary"]: names the alias "defualt", which '
        'settings.DATABASES lacks; did you mean "default"?',
        hint="settings.DATABASES has: " + ", ".join(f'"{a}"' for a in settings.DATABASES) + ".",
        id="poolkit.E023")]
