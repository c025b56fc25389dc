"""``settings.POOLKIT``, validated and cached: the only reader of the setting.

:func:`get_settings` builds the configuration on first use (:mod:`.build` merges the layers
that :mod:`.sources` reads, per the table in :mod:`.knobs`), caches it, and drops the cache on
``setting_changed`` so ``override_settings`` works; nothing is read at import time or in
``ready()``. The layers and their order are in docs/configuration.rst.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..exceptions import PoolkitConfigurationError, Problem
from .build import build_settings, parse_url
from .knobs import (
    DEFAULT_ENV_PREFIX,
    KNOBS,
    SECTION_PARSERS,
    TOP_LEVEL_KEYS,
    PoolkitSettings,
    PoolSettings,
    shown_value,
)

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "KNOBS",
    "SECTION_PARSERS",
    "TOP_LEVEL_KEYS",
    "PoolSettings",
    "PoolkitSettings",
    "build_settings",
    "get_settings",
    "on_reload",
    "parse_url",
    "reload",
    "shown_value",
    "validate",
]


_lock = threading.Lock()
_cached: PoolkitSettings | None = None


def _inputs() -> tuple[Any, Mapping[str, Mapping[str, Any]], Mapping[str, str]]:
    return getattr(settings, "POOLKIT", None), settings.DATABASES, os.environ


def validate() -> list[Problem]:
    """Every problem in the current configuration, without raising (for system checks)."""
    return build_settings(*_inputs())[1]


def get_settings() -> PoolkitSettings:
    """The validated configuration, built on first use and cached.

    Raises :class:`PoolkitConfigurationError` listing every problem. Environment variables
    are read once per build: call :func:`reload` after changing them in-process.
    """
    global _cached
    current = _cached
    if current is not None:
        return current
    with _lock:
        if _cached is None:
            built, problems = build_settings(*_inputs())
            if built is None:
                raise PoolkitConfigurationError(problems)
            _cached = built
        return _cached


def reload() -> None:
    """Forget the cached configuration; the next :func:`get_settings` rebuilds it."""
    global _cached
    with _lock:
        _cached = None
    for callback in list(_reload_callbacks):
        callback()


_reload_callbacks: list[Callable[[], None]] = []


def on_reload(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` whenever the configuration is reloaded (the engine registry uses it
    to rebuild pools whose settings changed)."""
    _reload_callbacks.append(callback)
    return callback


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("POOLKIT", "DATABASES", "TIME_ZONE", "USE_TZ"):
        reload()
