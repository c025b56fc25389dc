"""The validation kit every settings section uses: rules that check one value, the strict
reading of text from the environment and URLs, did-you-mean suggestions, and the collector
that gathers every problem of a configuration instead of stopping at the first.

A rule is a function ``value -> checked value`` that raises :class:`Invalid` (whose text is
``got <value>``) when the value breaks it; the caller phrases the message from the rule's
accepted values, so every section reports ``<key path>: must be <accepted>, got <value>``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .exceptions import Problem

__all__ = [
    "FALSE_TEXT",
    "TRUE_TEXT",
    "Collector",
    "Invalid",
    "Report",
    "accepted_keys",
    "boolean",
    "choice",
    "did_you_mean",
    "from_text",
    "integer",
    "key_path",
    "known_items",
    "nearest",
    "number",
    "optional",
    "text",
]


class Invalid(ValueError):
    """A value failed its rule; its text (``got ...``) ends the message."""


#: Spellings of a boolean accepted in environment variables and URL query parameters.
TRUE_TEXT = ("true", "yes", "on", "1")
FALSE_TEXT = ("false", "no", "off", "0")


def from_text(raw: str, cast: type) -> Any:
    """Read one value written as text, strictly.

    django-environ's own casts are too forgiving for settings that size pools: any unknown
    word is a silent ``False`` and ``"5s"`` becomes ``5.0``. A typo must be an error instead.
    """
    text = raw.strip()
    if text.lower() in ("", "none", "null"):
        return None
    if cast is str:
        return text  # a stray space must not turn "production" into a different environment
    if cast is bool:
        if text.lower() in TRUE_TEXT:
            return True
        if text.lower() in FALSE_TEXT:
            return False
        raise Invalid(f"got {raw!r}")
    try:
        return cast(text)
    except ValueError as error:
        raise Invalid(f"got {raw!r}") from error


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int, *, none: bool = False, minus_one: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if is_int(value) and (value >= minimum or (minus_one and value == -1)):
            return value
        raise Invalid(f"got {value!r}")

    return check


def number(*, positive: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if ((is_int(value) or (isinstance(value, float) and math.isfinite(value)))
                and (value > 0 or not positive)):
            return value
        raise Invalid(f"got {value!r}")

    return check


def boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise Invalid(f"got {value!r}")


def choice(options: Iterable[str]) -> Callable[[Any], Any]:
    choices = tuple(options)

    def check(value: Any) -> Any:
        if value is None or value in choices:
            return value
        raise Invalid(f"got {value!r}{did_you_mean(str(value), choices)}")

    return check


def text(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    raise Invalid(f"got {value!r}")


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional



def nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate, ignoring case: ``"POOL_SIZE"`` in ``POOLKIT`` (Django's own
    settings are upper case) must still suggest ``"pool_size"``."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``'; did you mean "x"?'`` for the nearest candidate (case-insensitive), or ``""``.
    Every section parser uses it, so suggestions read the same everywhere."""
    near = nearest(word, candidates)
    return f'; did you mean "{near}"?' if near else ""


def accepted_keys(keys: Iterable[str]) -> str:
    """The hint listing a section's valid keys."""
    return "Accepted keys: " + ", ".join(f'"{key}"' for key in keys) + "."


#: How a section parser reports a problem: ``report(key path, message, hint, check id)``.
Report = Callable[[str, str, str, str], None]


def known_items(section: Mapping[Any, Any], base: str, rules: Mapping[str, Any],
                report: Report, unknown_key_id: str) -> Iterator[tuple[str, Any, str, Any]]:
    """``(key, value, key path, rule)`` for each key of a settings section that ``rules``
    knows; each other key is reported (with the nearest valid one) and left out, so one pass
    finds every mistake of a section."""
    for key, value in section.items():
        path = f'{base}["{key}"]'
        rule = rules.get(str(key))
        if rule is None:
            report(path, "unknown key" + did_you_mean(str(key), rules), accepted_keys(rules),
                   unknown_key_id)
            continue
        yield str(key), value, path, rule


def key_path(*parts: str, base: str = "POOLKIT") -> str:
    """``POOLKIT["DATABASES"]["default"]``: where a value sits, as the user wrote it."""
    return base + "".join(f'["{part}"]' for part in parts)


class Collector:
    """Gathers every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str, hint: str, check_id: str) -> None:
        self.problems.append(Problem(path, message, hint, check_id))
