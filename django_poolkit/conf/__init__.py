"""``settings.POOLKIT``: defaults, presets, sizing, environment variables and validation.

A project writes one dict::

    POOLKIT = {
        "DEFAULTS": {"pool_timeout": 10},                 # every pool
        "DATABASES": {"default": {"preset": "small_api"}}, # one DATABASES alias
        "ENGINES": {"analytics": {"url": "postgresql://reporter@warehouse/stats"}},
    }

and every pool knob can also come from ``DATABASE_URL`` query parameters (django-environ
puts them in ``OPTIONS``) and from ``POOLKIT_*`` environment variables. The layers, weakest
first: built-in default, ``POOLKIT["DEFAULTS"]``, ``POOLKIT["DATABASES"|"ENGINES"][alias]``,
``OPTIONS`` from the URL, ``POOLKIT_<KNOB>``, ``POOLKIT_<ALIAS>__<KNOB>``. A ``preset`` or
``sizing`` sets ``pool_size``/``max_overflow`` unless a layer at least as strong sets them
explicitly. Every resolved value remembers where it came from (``PoolSettings.origins``).

Nothing is read at import time or in ``ready()``: :func:`get_settings` builds and validates the
configuration on first use, caches it, and the cache is dropped on ``setting_changed`` so
``override_settings`` works. Nothing below this module reads ``settings.POOLKIT``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .._schema import Report, accepted_keys, did_you_mean, known_items
from ..exceptions import PoolkitConfigurationError, Problem
from .build import build_settings
from .knobs import (
    DEFAULT_ENV_PREFIX,
    KNOBS,
    SECTION_PARSERS,
    TOP_LEVEL_KEYS,
    Knob,
    PoolkitSettings,
    PoolSettings,
)

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "KNOBS",
    "SECTION_PARSERS",
    "TOP_LEVEL_KEYS",
    "Knob",
    "PoolSettings",
    "PoolkitSettings",
    "Report",
    "accepted_keys",
    "build_settings",
    "did_you_mean",
    "get_settings",
    "known_items",
    "on_reload",
    "reload",
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
