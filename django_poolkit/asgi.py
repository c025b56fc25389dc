"""An ASGI wrapper that gives Django the lifespan protocol.

Django's ``ASGIHandler`` serves ``http`` (and refuses ``lifespan``), so an ASGI server never
gets a chance to tell it "you are starting" or "you are stopping": pools are opened by the
first requests and left to ``atexit``. Wrap the application instead::

    # asgi.py
    from django_poolkit.asgi import get_asgi_application

    application = get_asgi_application(warm_up=True, shutdown_timeout=10)

and run ``uvicorn project.asgi:application --lifespan on``. At ``lifespan.startup`` the
wrapper checks the configuration (:func:`~django_poolkit.lifecycle.validate_configuration`):
a broken one fails the startup with its message, so the server exits instead of answering
500s (``validate=False`` skips it). It then optionally warms the pools up (``pool_size``
connections each, and the async pools with ``warm_up_async``); at ``lifespan.shutdown`` it
waits up to ``shutdown_timeout`` seconds for checked-out connections, then closes every pool
(:func:`django_poolkit.lifecycle.ashutdown`).
Every other scope goes to Django untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from . import lifecycle
from .exceptions import PoolkitConfigurationError

__all__ = ["LifespanApplication", "get_asgi_application"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: Django's ASGIHandler annotates its arguments with other mapping types.
ASGIApp = Callable[..., Awaitable[None]]


class LifespanApplication:
    """Answers ``lifespan`` scopes itself and passes every other scope to ``app``.

    ``warm_up``: False, True (every PostgreSQL pool) or a list of aliases, for the sync pools;
    ``warm_up_async`` the same for the async pools. ``shutdown_timeout`` bounds the drain, in
    seconds. A failed warm-up reports ``lifespan.startup.failed``, so the server does not
    start serving with a database it cannot reach.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        warm_up: bool | Sequence[str] = False,
        warm_up_async: bool | Sequence[str] = False,
        shutdown_timeout: float = 10.0,
        validate: bool = True,
    ) -> None:
        self.app = app
        self.validate = validate
        self.warm_up = warm_up
        self.warm_up_async = warm_up_async
        self.shutdown_timeout = shutdown_timeout

    def __repr__(self) -> str:
        return f"<LifespanApplication {self.app!r} shutdown_timeout={self.shutdown_timeout}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except PoolkitConfigurationError as error:
                    logger.error("poolkit: configuration error, not starting: %s", error)
                    await send({"type": "lifespan.startup.failed",
                                "message": f"poolkit configuration error: {error}"})
                    return
                except Exception as error:
                    logger.exception("poolkit lifespan startup failed")
                    await send({"type": "lifespan.startup.failed",
                                "message": type(error).__name__})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await lifecycle.ashutdown(self.shutdown_timeout)
                except Exception as error:
                    logger.exception("poolkit lifespan shutdown failed")
                    await send({"type": "lifespan.shutdown.failed",
                                "message": type(error).__name__})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Check the configuration, then warm the pools up as configured (sync pools in a
        thread: they block)."""
        if self.validate:
            lifecycle.validate_configuration()
        if self.warm_up:
            aliases = None if self.warm_up is True else list(self.warm_up)
            await asyncio.to_thread(lifecycle.warm_up, aliases)
        if self.warm_up_async:
            aliases = None if self.warm_up_async is True else list(self.warm_up_async)
            await lifecycle.awarm_up(aliases)


def get_asgi_application(
    *,
    warm_up: bool | Sequence[str] = False,
    warm_up_async: bool | Sequence[str] = False,
    shutdown_timeout: float = 10.0,
    validate: bool = True,
) -> LifespanApplication:
    """Django's ASGI application (``django.core.asgi.get_asgi_application()``, which sets
    Django up) wrapped in :class:`LifespanApplication`."""
    from django.core.asgi import get_asgi_application as django_application

    return LifespanApplication(django_application(), warm_up=warm_up,
                               warm_up_async=warm_up_async, shutdown_timeout=shutdown_timeout,
                               validate=validate)
