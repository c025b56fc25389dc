"""System checks. Ids are API: never reused, every one documented in the README.

- poolkit.E001: a section of ``POOLKIT`` has the wrong type.
- poolkit.E002: an unknown key (the message suggests the nearest valid one).
- poolkit.E003: a value of the wrong type or out of range (the message states the rule).
- poolkit.E004: ``POOLKIT["DATABASES"]`` names an alias ``settings.DATABASES`` lacks.
- poolkit.E005: settings that cannot be combined.
- poolkit.E006: a ``POOLKIT_*`` environment variable is unknown or invalid.
- poolkit.E007: a ``POOLKIT["ENGINES"]`` entry has no usable ``url``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, register

from .conf import validate

__all__ = ["check_poolkit_settings"]


@register()
def check_poolkit_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Report every configuration problem as an error, the same ones ``get_engine()`` would
    raise, without a traceback."""
    return [
        Error(f"{problem.path}: {problem.message}.", hint=problem.hint, id=problem.check_id)
        for problem in validate()
    ]
