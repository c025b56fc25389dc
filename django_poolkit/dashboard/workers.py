"""Every gunicorn worker's pools summed, from Prometheus' multiprocess directory, so a page
served by one worker shows the whole server."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["summary", "worker_totals"]

_GAUGE_KEYS = {
    "poolkit_pool_size": "pool_size", "poolkit_pool_checked_out": "pool_checked_out",
    "poolkit_pool_checked_in": "pool_checked_in", "poolkit_pool_overflow": "pool_overflow",
    "poolkit_pool_capacity": "pool_capacity", "poolkit_pool_waiting": "pool_waiting",
}
_COUNTER_KEYS = {
    "poolkit_checkouts_total": "checkouts", "poolkit_timeouts_total": "timeouts",
    "poolkit_connections_opened_total": "connections_opened",
    "poolkit_invalidations_total": "invalidations",
}
_PID_FILE = re.compile(r"_(\d+)\.db$")


def worker_totals(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every live worker's pools summed, read from a ``PROMETHEUS_MULTIPROC_DIR``.

    Gauges are written as ``livesum`` (the sum over live processes) and counters as totals
    over every process that ever wrote, as prometheus_client's own multiprocess collector
    reads them. ``{"workers": pids seen in the directory, "pools": [{"alias", "kind",
    gauges..., counters...}]}``.
    """
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    pools: dict[tuple[str, str], dict[str, Any]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            key = _GAUGE_KEYS.get(sample.name) or _COUNTER_KEYS.get(sample.name)
            if key is None or "alias" not in sample.labels:
                continue
            entry = pools.setdefault((sample.labels["alias"], sample.labels.get("kind", "sync")),
                                     {"alias": sample.labels["alias"],
                                      "kind": sample.labels.get("kind", "sync")})
            entry[key] = int(sample.value)
    pids = {int(match.group(1)) for name in os.listdir(path)
            if (match := _PID_FILE.search(name))}
    live = sorted(pid for pid in pids if _alive(pid))
    return {"workers": len(pids), "live_workers": len(live),
            "pools": [pools[key] for key in sorted(pools)]}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def summary() -> dict[str, Any]:
    """The multiprocess section of the page: off, an error, or every live worker summed."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return {"enabled": False}
    try:
        totals = worker_totals(Path(path))
    except ImportError:
        return {"enabled": True, "error": "prometheus-client is not installed"}
    except OSError as error:
        return {"enabled": True, "error": f"cannot read the directory ({type(error).__name__})"}
    return {"enabled": True, "error": None, **totals}
