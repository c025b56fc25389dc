"""Read-your-writes state, held in ``contextvars`` so it is per request, task and asyncio task.

Three things send a read to the primary instead of a replica:

- :func:`use_primary`, as a context manager or a decorator (sync or async);
- a write earlier in the same scope: a :class:`scope` (``PoolkitMiddleware`` opens one per
  request; open one yourself around a task) pins the cluster it wrote to until the scope
  ends. Without a scope a write pins the current context for ``pin_seconds``;
- a token from an earlier request (signed cookie or header): the client wrote recently, so
  it reads from the primary until a replica has replayed its write (``pin_mode="lsn"``) or for
  the whole window (``"time"``), never longer than ``pin_seconds``.

Tokens are signed with ``django.core.signing`` (``SECRET_KEY``); an unsigned, tampered or
expired token is ignored, so a client can never force routing.

A ``ContextVar`` and not a thread-local (MDR#22): every asyncio task gets its own copy, and
asgiref copies the context into ``sync_to_async`` threads. The scope object is shared by
reference, so a write in a sync view running in a worker thread pins the async request
around it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, overload

from django.core import signing

__all__ = [
    "PinScope",
    "PinToken",
    "clear",
    "current_scope",
    "decode_tokens",
    "encode_tokens",
    "format_lsn",
    "note_write",
    "parse_lsn",
    "primary_forced",
    "scope",
    "use_primary",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Salt of the signed token: a token signed for something else never validates here.
SALT = "django_poolkit.pinning"


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` (PostgreSQL's ``pg_lsn`` text) as a byte position."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(lsn: int) -> str:
    """A byte position in PostgreSQL's ``X/Y`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class PinToken:
    """A client's recent write to one cluster: the primary's WAL position after it (None when
    unknown, or in ``"time"`` mode) and when the pin ends (``time.time()`` seconds)."""

    lsn: int | None
    expires: float

    def alive(self, now: float | None = None) -> bool:
        """Whether the pin still holds."""
        return (time.time() if now is None else now) < self.expires


def encode_tokens(tokens: Mapping[str, PinToken]) -> str:
    """Sign ``cluster -> token`` for a cookie or header."""
    payload = {name: [format_lsn(token.lsn) if token.lsn is not None else None,
                      round(token.expires, 3)]
               for name, token in tokens.items()}
    return signing.dumps(payload, salt=SALT, compress=True)


def decode_tokens(value: str | None, *, max_age: float) -> dict[str, PinToken]:
    """The live tokens in a signed value; ``{}`` for anything unsigned, tampered, malformed or
    older than ``max_age`` seconds. Expiries are capped at now + ``max_age``."""
    if not value:
        return {}
    try:
        payload = signing.loads(value, salt=SALT, max_age=timedelta(seconds=max_age))
    except signing.BadSignature:
        # Includes SignatureExpired. Never log the value: it is client-supplied.
        logger.debug("ignored a read-your-writes token with a bad or expired signature")
        return {}
    except Exception:  # a validly signed but undecodable payload cannot happen; be safe anyway
        logger.debug("ignored an undecodable read-your-writes token")
        return {}
    if not isinstance(payload, dict):
        return {}
    now = time.time()
    found: dict[str, PinToken] = {}
    for name, item in payload.items():
        if not (isinstance(name, str) and isinstance(item, list) and len(item) == 2):
            continue
        lsn_text, expires = item
        if not isinstance(expires, (int, float)) or isinstance(expires, bool):
            continue
        try:
            lsn = parse_lsn(lsn_text) if lsn_text is not None else None
        except (AttributeError, ValueError):
            continue
        token = PinToken(lsn, min(float(expires), now + max_age))
        if token.alive(now):
            found[name] = token
    return found


class PinScope:
    """The read-your-writes state of one request, task or ``with scope():`` block.

    ``written`` maps each cluster written in this scope to when (``time.monotonic()``);
    ``tokens`` holds the pins a client brought along; ``chosen`` the replica each cluster's
    reads stick to (``sticky``). An *implicit* scope, made by a write outside any scope, pins
    for ``pin_seconds`` only, since nothing would ever end it.
    """

    def __init__(self, tokens: Mapping[str, PinToken] | None = None, *,
                 implicit: bool = False) -> None:
        self.tokens: dict[str, PinToken] = dict(tokens or {})
        self.written: dict[str, float] = {}
        self.chosen: dict[str, str] = {}
        self.implicit = implicit

    def __repr__(self) -> str:
        return (f"<PinScope written={sorted(self.written)} tokens={sorted(self.tokens)}"
                f"{' implicit' if self.implicit else ''}>")

    def wrote(self, cluster: str, pin_seconds: float) -> bool:
        """Whether a write in this scope pins ``cluster`` to its primary now."""
        at = self.written.get(cluster)
        if at is None:
            return False
        return not self.implicit or time.monotonic() - at < pin_seconds

    def token(self, cluster: str) -> PinToken | None:
        """The client's live pin on ``cluster``, if any."""
        token = self.tokens.get(cluster)
        return token if token is not None and token.alive() else None

    def outgoing(self, lsns: Mapping[str, int | None], pin_seconds: float) -> dict[str, PinToken]:
        """The tokens to hand back to the client: a fresh pin for each cluster written here
        (with the primary's WAL position from ``lsns``), plus the live pins it brought."""
        now = time.time()
        result = {name: token for name, token in self.tokens.items() if token.alive(now)}
        for name in self.written:
            result[name] = PinToken(lsns.get(name), now + pin_seconds)
        return result


_scope: ContextVar[PinScope | None] = ContextVar("poolkit_pin_scope", default=None)
_primary_depth: ContextVar[int] = ContextVar("poolkit_use_primary", default=0)


def current_scope() -> PinScope | None:
    """The scope of the current request, task or block, if any."""
    return _scope.get()


def primary_forced() -> bool:
    """Whether the current code runs under :func:`use_primary`."""
    return _primary_depth.get() > 0


def clear() -> None:
    """Forget the pin state of the current context: the scope a write outside any scope left
    behind, and any scope entered with ``__enter__`` and never left. For a worker's loop
    between jobs, and for tests (pytest runs every test in the same context)."""
    _scope.set(None)


def note_write(cluster: str) -> None:
    """Record a write to ``cluster`` (the router calls this from ``db_for_write``)."""
    found = _scope.get()
    if found is None:
        found = PinScope(implicit=True)
        _scope.set(found)
    found.written.setdefault(cluster, time.monotonic())
    found.chosen.pop(cluster, None)


class _Switch(ABC):
    """A context manager (sync and async) that is also a decorator (sync and async).

    Every decorated call enters a fresh copy, so one decorated function can run in many
    threads and tasks at once; ``ContextVar`` tokens are kept on a stack for nesting.
    """

    def __init__(self) -> None:
        self._resets: list[Callable[[], None]] = []

    @abstractmethod
    def _enter(self) -> Any:
        """Switch the routing on; return what ``with ... as`` binds."""

    def _copy(self) -> _Switch:
        return type(self)()

    def __enter__(self) -> Any:
        return self._enter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._resets.pop()()

    async def __aenter__(self) -> Any:
        return self._enter()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._resets.pop()()

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._copy():
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._copy():
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]


def _reset_later(var: ContextVar[Any], token: Token[Any]) -> Callable[[], None]:
    return lambda: var.reset(token)


class _UsePrimary(_Switch):
    def _enter(self) -> None:
        token = _primary_depth.set(_primary_depth.get() + 1)
        self._resets.append(_reset_later(_primary_depth, token))


@overload
def use_primary(func: F) -> F: ...


@overload
def use_primary(func: None = None) -> _UsePrimary: ...


def use_primary(func: F | None = None) -> F | _UsePrimary:
    """Send every read inside to the primary of its cluster.

    ``with use_primary():``, ``async with use_primary():``, ``@use_primary`` and
    ``@use_primary()`` all work, on sync and async functions. Writes go to the primary anyway.
    """
    switch = _UsePrimary()
    return switch(func) if func is not None else switch


class scope(_Switch):
    """A read-your-writes scope: a write inside pins its cluster's reads to the primary until
    the scope ends. ``PoolkitMiddleware`` opens one per request; use one around a background
    task (``@scope()`` or ``with scope(token):``), passing the token of the request that queued
    it so the task sees that request's writes.

    ``token`` is a signed value (from :func:`encode_tokens`, a cookie or a header); anything
    invalid is ignored. ``max_age`` bounds its age in seconds (default: ``pin_seconds``).
    """

    def __init__(self, token: str | None = None, *, max_age: float | None = None) -> None:
        super().__init__()
        self._token = token
        self._max_age = max_age

    def _copy(self) -> scope:
        return scope(self._token, max_age=self._max_age)

    def _enter(self) -> PinScope:
        max_age = self._max_age
        if max_age is None:
            from .routing.settings import routing_settings

            routing = routing_settings()
            max_age = routing.pin_seconds if routing is not None else 0.0
        found = PinScope(decode_tokens(self._token, max_age=max_age) if max_age > 0 else {})
        token = _scope.set(found)
        self._resets.append(_reset_later(_scope, token))
        return found
