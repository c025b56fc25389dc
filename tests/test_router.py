"""PrimaryReplicaRouter's decisions that need no server: clusters, strategies, relations,
migrations. (Against the real replica: test_router_replica.py.)"""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType

from django_poolkit import pinning, routers
from django_poolkit.routing.settings import ClusterConfig, ReplicaConfig, RoutingSettings
from django_poolkit.routing.state import replica_state
from testproject.demo.models import Note

PG = "django.db.backends.postgresql"


def make_routing(*, sticky: bool = True, **cluster_options: Any) -> RoutingSettings:
    """Two clusters: "main" (default, r1, r2) is the default; "auth" (authdb, authro) serves
    django.contrib.auth."""
    main = ClusterConfig(
        name="main", primary="default",
        replicas=(ReplicaConfig("r1", 3.0), ReplicaConfig("r2", 1.0)), apps=(),
        strategy="round_robin", max_lag=5.0, readmit_lag=2.5, max_lag_bytes=None,
        readmit_lag_bytes=None, fallback="primary")
    values = {**main.__dict__, **cluster_options}
    main = ClusterConfig(**values)
    auth = ClusterConfig(
        name="auth", primary="authdb", replicas=(ReplicaConfig("authro"),), apps=("auth",),
        strategy="random", max_lag=5.0, readmit_lag=2.5, max_lag_bytes=None,
        readmit_lag_bytes=None, fallback="primary")
    return RoutingSettings(
        clusters={"main": main, "auth": auth}, default_cluster="main", sticky=sticky,
        probe_interval=None, probe_timeout=1.0, pin_mode="lsn", pin_seconds=15.0,
        cookie_name="poolkit_pin", cookie_secure=False, cookie_samesite="Lax",
        header_name="X-Poolkit-Pin")


class FakeConnections:
    """Django's ``connections`` for aliases this test project does not define: only
    ``in_atomic_block`` is read by the router."""

    def __init__(self) -> None:
        self.atomic: set[str] = set()

    def __getitem__(self, alias: str) -> Any:
        return SimpleNamespace(in_atomic_block=alias in self.atomic)


@pytest.fixture
def routing(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Route with make_routing() (replicas never probed: "unknown", so in rotation)."""
    state: dict[str, RoutingSettings] = {"routing": make_routing()}
    fake = FakeConnections()

    def use(**options: Any) -> RoutingSettings:
        state["routing"] = make_routing(**options)
        return state["routing"]

    monkeypatch.setattr(routers, "routing_settings", lambda: state["routing"])
    monkeypatch.setattr(routers, "connections", fake)
    monkeypatch.setattr("django_poolkit.routing.state.routing_settings", lambda: state["routing"])
    pinning.clear()
    use.connections = fake  # type: ignore[attr-defined]
    yield use
    replica_state.reset()
    pinning.clear()


def instance(model: Any, db: str) -> Any:
    obj = model()
    obj._state.db = db
    return obj


def test_models_go_to_their_cluster(routing):
    router = routers.PrimaryReplicaRouter()
    assert router.db_for_write(Note) == "default"
    assert router.db_for_write(User) == "authdb"
    with pinning.scope():
        assert router.db_for_read(User) == "authro"
        assert router.db_for_read(ContentType) in ("r1", "r2")
    # An instance's database decides its cluster (a related lookup, a save of a read row).
    assert router.db_for_write(Note, instance=instance(Note, "authro")) == "authdb"


def test_models_of_no_cluster_are_left_to_django(routing):
    routing_settings = make_routing()
    object.__setattr__(routing_settings, "default_cluster", None)
    routers.routing_settings = lambda: routing_settings  # restored by monkeypatch
    router = routers.PrimaryReplicaRouter()
    assert router.db_for_read(Note) is None
    assert router.db_for_write(Note) is None
    assert router.db_for_read(User) == "authro"


def test_round_robin_alternates_outside_a_scope(routing):
    router = routers.PrimaryReplicaRouter()
    picks = [router.db_for_read(Note) for _ in range(6)]
    assert sorted(Counter(picks).items()) == [("r1", 3), ("r2", 3)]
    assert picks[0] != picks[1]


def test_sticky_keeps_one_replica_per_scope(routing):
    router = routers.PrimaryReplicaRouter()
    with pinning.scope():
        first = router.db_for_read(Note)
        assert {router.db_for_read(Note) for _ in range(5)} == {first}
    routing(sticky=False)
    with pinning.scope():
        assert len({router.db_for_read(Note) for _ in range(4)}) == 2


def test_weighted_follows_the_weights(routing):
    routing(strategy="weighted")
    router = routers.PrimaryReplicaRouter()
    random.seed(20261124)
    picks = Counter(router.db_for_read(Note) for _ in range(2000))
    assert 1300 < picks["r1"] < 1700  # weight 3 of 4: 1500 expected
    assert picks["r1"] + picks["r2"] == 2000


def test_random_uses_every_replica(routing):
    routing(strategy="random")
    router = routers.PrimaryReplicaRouter()
    random.seed(7)
    assert set(router.db_for_read(Note) for _ in range(50)) == {"r1", "r2"}


def test_atomic_on_the_primary_keeps_reads_there(routing):
    routing.connections.atomic.add("default")
    router = routers.PrimaryReplicaRouter()
    assert router.db_for_read(Note) == "default"
    assert router.db_for_read(User) == "authro"  # another cluster's primary is not in atomic
    assert routers.choose_read(make_routing().clusters["main"], make_routing()).reason == (
        "in_atomic_block")


def test_a_write_pins_only_its_own_cluster(routing):
    router = routers.PrimaryReplicaRouter()
    with pinning.scope():
        router.db_for_write(Note)
        assert router.db_for_read(Note) == "default"
        assert router.db_for_read(User) == "authro"


def test_a_time_token_pins_and_an_lsn_token_needs_a_caught_up_replica(routing):
    import time

    main = make_routing().clusters["main"]
    time_token = pinning.encode_tokens({"main": pinning.PinToken(None, time.time() + 10)})
    with pinning.scope(time_token, max_age=15):
        assert routers.choose_read(main, make_routing()).reason == "pinned_time"
    lsn_token = pinning.encode_tokens({"main": pinning.PinToken(5, time.time() + 10)})
    with pinning.scope(lsn_token, max_age=15):
        # Never-probed replicas have no known replay position: the primary.
        assert routers.choose_read(main, make_routing()).reason == "pinned_lsn"


def test_allow_relation_within_a_cluster_only(routing):
    router = routers.PrimaryReplicaRouter()
    assert router.allow_relation(instance(Note, "default"), instance(Note, "r2")) is True
    assert router.allow_relation(instance(Note, "r1"), instance(User, "authro")) is False
    assert router.allow_relation(instance(Note, "r1"), instance(Note, "elsewhere")) is None


def test_allow_migrate_on_primaries_only(routing):
    router = routers.PrimaryReplicaRouter()
    assert router.allow_migrate("default", "demo") is True
    assert router.allow_migrate("r1", "demo") is False
    assert router.allow_migrate("authro", "auth") is False
    assert router.allow_migrate("authdb", "auth", model_name="user") is True
    assert router.allow_migrate("authdb", "demo") is False  # demo belongs to "main"
    assert router.allow_migrate("default", "auth") is False
    assert router.allow_migrate("elsewhere", "demo") is None


def test_without_routing_the_router_abstains(settings):
    settings.POOLKIT = {}
    router = routers.PrimaryReplicaRouter()
    assert router.db_for_read(Note) is None
    assert router.db_for_write(Note) is None
    assert router.allow_migrate("default", "demo") is None
    assert router.allow_relation(instance(Note, "default"), instance(Note, "x")) is None
