"""``PoolkitMiddleware``: a read-your-writes scope per request, and HTTP 503 when the
database cannot serve it.

Add ``"django_poolkit.middleware.PoolkitMiddleware"`` near the top of ``MIDDLEWARE`` (above
every middleware that reads the database, such as sessions and auth). It works in sync (WSGI)
and async (ASGI) stacks.

Per request it:

1. opens a :class:`~django_poolkit.pinning.scope` from the client's signed token (cookie
   ``cookie_name`` or header ``header_name``; anything unsigned, tampered or expired is
   ignored), so a client that just wrote keeps reading fresh data;
2. after the response, when the request wrote, records the primary's WAL position
   (``pin_mode="lsn"``) and sends a new signed token in the cookie and the header;
3. answers :class:`~django_poolkit.PoolTimeout` (no pooled connection within
   ``pool_timeout``) and :class:`~django_poolkit.exceptions.NoHealthyReplica` with HTTP 503 and a
   ``Retry-After`` header, instead of a 500: the server is overloaded, not broken, and load
   balancers and clients know to retry a 503. The body names no alias, host or figure; the
   log line does.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import add_never_cache_headers

from . import pinning
from .exceptions import NoHealthyReplica, PoolTimeout
from .routers import issue_token
from .routing.settings import RoutingSettings, routing_settings

__all__ = ["PoolkitMiddleware", "escape_for_log", "unavailable_response"]

logger = logging.getLogger(__name__)

#: Exceptions that mean "the database cannot serve this now": answered with 503.
UNAVAILABLE = (PoolTimeout, NoHealthyReplica)

# Attribute set on the request by the got_request_exception receiver (see below).
_SEEN = "_poolkit_unavailable"


def escape_for_log(text: str) -> str:
    """``text`` with control characters and non-ASCII written as escapes (``\\n``,
    ``\\x1b``, ``\\u2028``), the way ``django.utils.log.log_response`` escapes its arguments."""
    return text.encode("unicode_escape").decode("ascii")


def unavailable_response(retry_after: int = 1) -> HttpResponse:
    """The 503 answer: a short text body, ``Retry-After`` in seconds, never cached."""
    response = HttpResponse(
        "Service temporarily unavailable: the database is busy. Please retry shortly.\n",
        status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


def _remember_unavailable(sender: Any, request: HttpRequest | None = None,
                          **kwargs: Any) -> None:
    """Django turns an exception raised *below* a middleware (in another middleware, or a
    view with no process_exception chance) into a 500 before this middleware sees it, and
    sends ``got_request_exception`` from inside its ``except`` block: note the exception on
    the request so the 500 can become a 503."""
    error = sys.exc_info()[1]
    if request is not None and isinstance(error, UNAVAILABLE):
        setattr(request, _SEEN, error)


got_request_exception.connect(_remember_unavailable, dispatch_uid="django_poolkit.middleware")


def _incoming(request: HttpRequest, routing: RoutingSettings) -> dict[str, pinning.PinToken]:
    """The live pins the client brought, from the cookie and the header (latest wins)."""
    found: dict[str, pinning.PinToken] = {}
    values = [request.COOKIES.get(routing.cookie_name)]
    if routing.header_name:
        values.append(request.headers.get(routing.header_name))
    for value in values:
        for name, token in pinning.decode_tokens(value, max_age=routing.pin_seconds).items():
            known = found.get(name)
            if known is None or token.expires > known.expires:
                found[name] = token
    return found


class PoolkitMiddleware:
    """Request scope for read-your-writes, and 503 for an exhausted pool (sync and async).

    ``retry_after`` (seconds, for the ``Retry-After`` header) can be changed in a subclass.
    """

    sync_capable = True
    async_capable = True
    retry_after = 1

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __repr__(self) -> str:
        return f"<PoolkitMiddleware {'async' if self.is_async else 'sync'}>"

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        opened = self._open(request)
        try:
            response = self.get_response(request)
            if opened is not None:
                self._finish(response, *opened)
        finally:
            if opened is not None:
                opened[2].__exit__(None, None, None)
        return self._unavailable_if_seen(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        opened = self._open(request)
        try:
            result: Awaitable[HttpResponseBase] = self.get_response(request)
            response = await result
            if opened is not None and opened[0].written:
                await sync_to_async(self._finish, thread_sensitive=True)(response, *opened)
        finally:
            if opened is not None:
                opened[2].__exit__(None, None, None)
        return self._unavailable_if_seen(request, response)

    def process_exception(self, request: HttpRequest,
                          exception: Exception) -> HttpResponse | None:
        """A view raised: answer an exhausted pool or missing replica with 503."""
        if isinstance(exception, UNAVAILABLE):
            self._log(request, exception)
            return unavailable_response(self.retry_after)
        return None

    def _unavailable_if_seen(self, request: HttpRequest,
                             response: HttpResponseBase) -> HttpResponseBase:
        error = getattr(request, _SEEN, None)
        if error is not None and response.status_code == 500:
            self._log(request, error)
            return unavailable_response(self.retry_after)
        return response

    def _log(self, request: HttpRequest, error: BaseException) -> None:
        # request.path, not the full URL: a query string may carry secrets. The path and the
        # method are the client's text: escaped as Django's own request log does, so a "%0a"
        # in the path cannot write a forged log line.
        logger.warning("%s %s answered 503: %s", escape_for_log(str(request.method)),
                       escape_for_log(request.path), error)

    def _open(self, request: HttpRequest) -> tuple[pinning.PinScope, RoutingSettings,
                                                   pinning.scope] | None:
        routing = routing_settings()
        if routing is None:
            return None
        tokens = _incoming(request, routing) if routing.pin_mode != "off" else {}
        switch = pinning.scope(max_age=routing.pin_seconds)
        found = switch.__enter__()
        found.tokens.update(tokens)
        return found, routing, switch

    def _finish(self, response: HttpResponseBase, found: pinning.PinScope,
                routing: RoutingSettings, switch: pinning.scope) -> None:
        """Send a fresh token when this request wrote (the old one stays valid otherwise)."""
        if not found.written or routing.pin_mode == "off":
            return
        token = issue_token(found)
        if token is None:
            return
        response.set_cookie(routing.cookie_name, token,
                            max_age=max(1, math.ceil(routing.pin_seconds)),
                            secure=(settings.SESSION_COOKIE_SECURE
                                    if routing.cookie_secure is None else routing.cookie_secure),
                            httponly=True,
                            samesite=routing.cookie_samesite)
        if routing.header_name:
            response[routing.header_name] = token
