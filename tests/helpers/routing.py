"""What the routing tests share (their ``route`` fixture is in ``tests/conftest.py``).

The replica is the real streaming replica of ``scripts/replica`` (``DATABASES["replica"]``,
``TEST["MIRROR"] = "default"``): the test database is created on the primary and read there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "replica"
ROUTER = "django_poolkit.routers.PrimaryReplicaRouter"
DBS = ["default", "replica"]


def replica_script(*args: str) -> None:
    """Run ``scripts/replica``; a failure fails the test with the script's output."""
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=180,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/replica {' '.join(args)} failed: {done.stdout}{done.stderr}")


def routing_config(**options: Any) -> dict[str, Any]:
    """A POOLKIT with one cluster, default -> replica; no background prober unless asked."""
    cluster = {"primary": "default", "replicas": ["replica"]}
    cluster.update(options.pop("cluster", {}))
    return {"ROUTING": {"probe_interval": None, **options, "CLUSTERS": {"main": cluster}}}


@contextmanager
def replica_paused() -> Iterator[None]:
    """Replay paused on the replica inside the block; always resumed afterwards. Enter it
    after ``route()``, which waits for the replica to catch up."""
    replica_script("pause")
    try:
        yield
    finally:
        replica_script("resume")
