"""What the health-endpoint tests share: the token, the POOLKIT with a HEALTH section, a GET
that sends the token, and a timed call."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.test import Client

TOKEN = "health-token-" + secrets.token_hex(8)
TOKEN_HEADER = "X-Poolkit-Health-Token"

#: Probe timeout for tests that expect a healthy answer: generous, because a loaded machine can
#: take longer than the suite's default 0.3 s to open a connection (that would read "degraded").
HEALTHY_TIMEOUT = 2.0


def poolkit(**section: Any) -> dict[str, Any]:
    """The test project's POOLKIT plus a HEALTH section (short timeout, the test token)."""
    health_section = {"timeout": 0.3, "cache_ttl": 0, "token": TOKEN, **section}
    return {**settings.POOLKIT, "HEALTH": health_section}


def with_token(client: Client, path: str) -> Any:
    """GET ``path`` sending the health token."""
    return client.get(path, headers={TOKEN_HEADER: TOKEN})


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()``'s result and how long it took, in seconds."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started
