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
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import Problem

__all__ = [
    "FALSE_TEXT",
    "SHORTEST_WAIT",
    "TRUE_TEXT",
    "Collector",
    "Field",
    "Invalid",
    "Report",
    "Rule",
    "accepted_keys",
    "boolean",
    "bounds_of",
    "choice",
    "did_you_mean",
    "fields",
    "http_token",
    "integer",
    "is_number",
    "key_path",
    "names",
    "nearest",
    "number",
    "optional",
    "read_fields",
    "read_text",
    "secret",
    "template",
    "text",
]


class Invalid(ValueError):
    """A value failed its rule; its text (``got ...``) ends the message."""


#: A rule: returns the checked value, or raises :class:`Invalid`.
Rule = Callable[[Any], Any]


#: The floor of every timeout and wait, in seconds (1 ms): a positive value below it passes
#: "> 0" and then fails every checkout, query or probe (``pool_timeout=1e-300`` times out
#: before the queue is looked at; ``client_timeout=1e-9`` closes the connection at the first
#: read). No real deployment waits less.
SHORTEST_WAIT = 0.001


#: Spellings of a boolean accepted in environment variables and URL query parameters.
TRUE_TEXT = ("true", "yes", "on", "1")
FALSE_TEXT = ("false", "no", "off", "0")


#: Numbers as the manual promises them: ASCII digits, an optional minus, no "_" or "+", no
#: "nan"/"inf" (Python's int() and float() accept all of those, and other scripts' digits too).
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]-?[0-9]+)?")


def read_text(raw: str, cast: type) -> Any:
    """Read one value written as text, strictly.

    django-environ's own casts are too forgiving for settings that size pools: any unknown
    word is a silent ``False`` and ``"5s"`` becomes ``5.0``. A typo must be an error instead.
    An empty value is an error too: ``POOLKIT_STATEMENT_TIMEOUT=`` must not silently mean
    "no timeout" (write ``none`` for None; unset the variable for the configured value).
    """
    text = raw.strip()
    if not text:
        raise Invalid(f"got an empty value {raw!r}; unset it to keep the value configured "
                      "elsewhere, or write none where None is accepted")
    if text.lower() in ("none", "null"):
        return None
    if cast is str:
        return text  # a stray space must not turn "production" into a different environment
    if cast is bool:
        if text.lower() in TRUE_TEXT:
            return True
        if text.lower() in FALSE_TEXT:
            return False
        raise Invalid(f"got {raw!r}")
    pattern = _INTEGER_TEXT if cast is int else _NUMBER_TEXT
    if not pattern.fullmatch(text):
        lookalike = "_" in text or text.startswith("+") or any(
            char.isdigit() and not char.isascii() for char in text)
        raise Invalid(f"got {raw!r}" + (" (ASCII digits only: no '+', '_' or other scripts' "
                                        "digits)" if lookalike else ""))
    try:
        return cast(text)
    except (ValueError, OverflowError) as error:
        raise Invalid(f"got {raw!r}") from error


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a *finite* float: ``inf`` and ``nan`` are refused by every number rule, since
    no timeout, size or threshold means anything at infinity."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _fail(value: Any) -> Invalid:
    return Invalid(f"got {value!r}")


def _bounded(check: Rule, low: float, high: float) -> Rule:
    """Mark a number rule with its bounds, so tests (and the commands' arguments) can read
    them: every number rule has both, a new setting cannot forget a maximum."""
    check.bounds = (low, high)  # type: ignore[attr-defined]
    return check


def bounds_of(rule: Rule) -> tuple[float, float] | None:
    """``(low, high)`` of a number rule (through :func:`optional`), else None."""
    found: tuple[float, float] | None = getattr(rule, "bounds", None)
    return found


def integer(minimum: int, maximum: int, *, none: bool = False,
            minus_one: bool = False) -> Rule:
    """An int with ``minimum <= value <= maximum`` (or -1 with ``minus_one``, or None with
    ``none``). The maximum is required: a count or a duration has a sane ceiling, and Python
    ints have none (``statement_timeout=2**31`` overflows the server's int4)."""
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if is_int(value) and (minimum <= value <= maximum or (minus_one and value == -1)):
            return value
        raise _fail(value)

    return _bounded(check, minimum, maximum)


def number(*, above: float | None = None, at_least: float | None = None, at_most: float,
           none: bool = False, as_float: bool = False) -> Rule:
    """A finite number within the bounds given (None too with ``none``); ``as_float``
    returns it as a float. ``at_most`` is required: ``pool_timeout=1e10`` overflows a
    ``threading`` wait and ``probe_interval=1e300`` a ``time.sleep``."""
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if is_number(value) and (above is None or value > above) and (
                at_least is None or value >= at_least) and value <= at_most:
            return float(value) if as_float else value
        raise _fail(value)

    low = above if above is not None else at_least
    return _bounded(check, -math.inf if low is None else low, at_most)


def boolean(value: Any) -> Any:
    """True or False, nothing that merely looks like one."""
    if isinstance(value, bool):
        return value
    raise _fail(value)


def choice(options: Iterable[str], *, none: bool = False) -> Rule:
    """One of ``options`` (or None with ``none``); a near miss gets a did-you-mean."""
    choices = tuple(options)

    def check(value: Any) -> Any:
        if (value is None and none) or value in choices:
            return value
        raise Invalid(f"got {value!r}{did_you_mean(str(value), choices)}")

    return check


def text(*, none: bool = False, min_length: int = 1, nonblank: bool = False,
         stripped: bool = False) -> Rule:
    """A string of at least ``min_length`` characters (not only spaces with ``nonblank``;
    returned without surrounding spaces with ``stripped``), or None with ``none``."""
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if isinstance(value, str) and len(value) >= min_length and (
                not nonblank or value.strip()):
            return value.strip() if stripped else value
        raise _fail(value)

    return check


def names(*, none: bool = False, non_empty: bool = False) -> Rule:
    """A list or tuple of strings (aliases, pool names), as a tuple; None with ``none``; at
    least one with ``non_empty`` (``databases: []`` would probe nothing and pass)."""
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value) \
                and (value or not non_empty):
            return tuple(value)
        raise _fail(value)

    return check


def template(placeholders: Iterable[str], *, none: bool = False) -> Rule:
    """A ``str.format`` template using only ``{name}`` for the given placeholders (``{{`` and
    ``}}`` for literal braces), or None with ``none``: ``application_name="billing{v2}"``
    would raise KeyError on every connection."""
    allowed = tuple(placeholders)

    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if not isinstance(value, str) or not value:
            raise _fail(value)
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError:
            raise _fail(value) from None
        for _literal, name, spec, conversion in parts:
            if name is not None and (name not in allowed or spec or conversion):
                raise _fail(value)
        return value

    return check


#: RFC 9110 ``token``: the characters of a header name, and of a cookie name (RFC 6265).
_TOKEN_CHARACTERS = frozenset("!#$%&'*+-.^_`|~0123456789"
                              "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def http_token(*, none: bool = False) -> Rule:
    """A header or cookie name: one or more RFC 9110 token characters (no space, ``;``,
    ``=``, ``:``, quote, CR/LF or non-ASCII), or None with ``none``. Anything else breaks
    every response that sets it, or lets a value inject another header."""
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if isinstance(value, str) and value and set(value) <= _TOKEN_CHARACTERS:
            return value
        raise _fail(value)

    return check


def secret(*, min_length: int, max_length: int = 4096, none: bool = False) -> Rule:
    """A secret sent in an HTTP header: ``min_length`` to ``max_length`` characters, none of
    them a space or a control character at either end or a CR/LF anywhere, and Latin-1
    encodable (HTTP header bytes are Latin-1: any other secret can never match). The
    refusal never shows the value."""
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if (isinstance(value, str) and min_length <= len(value) <= max_length
                and value == value.strip() and value.isprintable()):
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                pass
            else:
                return value
        raise Invalid("got a value that breaks this rule")

    return check


def optional(check: Rule) -> Rule:
    """``check``, or None (with ``check``'s bounds)."""
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    bounds = bounds_of(check)
    return optional if bounds is None else _bounded(optional, *bounds)


@dataclass(frozen=True)
class Field:
    """One setting of a section: its default, what it accepts (quoted in messages and docs),
    what it does, and the rule that checks it.

    ``cast`` reads the value from text (environment variables, URL query parameters);
    ``hint`` replaces ``doc`` as the hint of a wrong value; ``secret`` keeps the value out of
    the message (a token)."""

    name: str
    default: Any
    accepted: str
    doc: str
    check: Rule
    cast: type = str
    hint: str | None = None
    secret: bool = False

    def parse(self, value: Any, *, from_text: bool = False) -> Any:
        """Return the checked value, converting text from the environment or a URL first.

        django-environ turns digit-only URL query values into ints (``?pool_pre_ping=1``
        arrives as ``1``), so numbers from a text source are read as their text again.
        """
        if from_text and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if from_text and isinstance(value, str):
            value = read_text(value, self.cast)
        return self.check(value)

    def message(self, error: Invalid) -> str:
        """``must be <accepted>, got <value>`` (without the value for a secret)."""
        return f"must be {self.accepted}" if self.secret else f"must be {self.accepted}, {error}"


def fields(*items: Field) -> dict[str, Field]:
    """A section's fields by name, in the order they are documented."""
    return {item.name: item for item in items}


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


def read_fields(
    section: Mapping[Any, Any],
    known: Mapping[str, Field],
    path: Callable[[str], str],
    report: Report,
    *,
    unknown_key_id: str,
    bad_value_id: str,
    skip: Iterable[str] = (),
    accepted: Iterable[str] | None = None,
    hint: Callable[[Field, Any], str | None] | None = None,
    on_valid: Callable[[str, Any, str], None] | None = None,
) -> dict[str, Any]:
    """Check every key of one settings section against its fields; the one loop every
    section uses, so each reports the same way.

    Returns the valid values by key. An unknown key is reported with the nearest valid one
    (from ``accepted``, default the fields) and a wrong value as ``must be <accepted>, got
    <value>``; both are left out, so one pass finds every mistake. ``skip`` names keys the
    caller reads itself, ``hint`` may give a better hint for a wrong value, ``on_valid(key,
    value, path)`` checks a valid value further, in key order.
    """
    skipped = tuple(skip)
    names_ = list(accepted) if accepted is not None else list(known)
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key in skipped:
            continue
        where = path(str(key))
        field_ = known.get(str(key))
        if field_ is None:
            report(where, "unknown key" + did_you_mean(str(key), names_), accepted_keys(names_),
                   unknown_key_id)
            continue
        try:
            values[str(key)] = field_.parse(value)
        except Invalid as error:
            better = hint(field_, value) if hint is not None else None
            report(where, field_.message(error), better or field_.hint or field_.doc,
                   bad_value_id)
            continue
        if on_valid is not None:
            on_valid(str(key), values[str(key)], where)
    return values


def key_path(*parts: str, base: str = "POOLKIT") -> str:
    """``POOLKIT["DATABASES"]["default"]``: where a value sits, as the user wrote it."""
    return base + "".join(f'["{part}"]' for part in parts)


class Collector:
    """Gathers every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str, hint: str, check_id: str) -> None:
        self.problems.append(Problem(path, message, hint, check_id))
