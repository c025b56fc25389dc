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

import difflib
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from . import sizing
from .exceptions import PoolkitConfigurationError, Problem

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "KNOBS",
    "TOP_LEVEL_KEYS",
    "Knob",
    "PoolSettings",
    "PoolkitSettings",
    "accepted_keys",
    "build_settings",
    "did_you_mean",
    "get_settings",
    "parse_url",
    "reload",
    "validate",
]

DEFAULT_ENV_PREFIX = "POOLKIT_"

# Check ids, never reused (see README "System checks").
E_NOT_A_DICT = "poolkit.E001"  # a section of POOLKIT has the wrong type
E_UNKNOWN_KEY = "poolkit.E002"  # a key poolkit does not know (with did-you-mean)
E_BAD_VALUE = "poolkit.E003"  # a value of the wrong type or out of range
E_UNKNOWN_ALIAS = "poolkit.E004"  # POOLKIT["DATABASES"] names an alias DATABASES lacks
E_CONFLICT = "poolkit.E005"  # options that cannot be combined
E_ENVIRONMENT = "poolkit.E006"  # a POOLKIT_* environment variable is unknown or invalid
E_ENGINE_URL = "poolkit.E007"  # an ENGINES entry has no usable url


class _Invalid(ValueError):
    """A knob value failed its rule; carries the rule so the message can state it."""


@dataclass(frozen=True)
class Knob:
    """One pool setting: its default, the rule it must satisfy, and what it does."""

    name: str
    default: Any
    accepted: str
    doc: str
    check: Callable[[Any], Any]
    cast: type = str

    def parse(self, value: Any, *, from_text: bool) -> Any:
        """Return the checked value, converting text from the environment or a URL first.

        django-environ turns digit-only URL query values into ints (``?pool_pre_ping=1``
        arrives as ``1``), so numbers from a text source are read as their text again.
        """
        if from_text and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if from_text and isinstance(value, str):
            value = _from_text(value, self.cast)
        return self.check(value)


#: Spellings of a boolean accepted in environment variables and URL query parameters.
TRUE_TEXT = ("true", "yes", "on", "1")
FALSE_TEXT = ("false", "no", "off", "0")


#: Numbers as the README promises them: ASCII digits, an optional minus, no "_" or "+", no
#: "nan"/"inf" (Python's int() and float() accept all of those, and Arabic-Indic digits too).
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]-?[0-9]+)?")


def _from_text(raw: str, cast: type) -> Any:
    """Read one value written as text, strictly.

    django-environ's own casts are too forgiving for settings that size pools: any unknown
    word is a silent ``False`` and ``"5s"`` becomes ``5.0``. A typo must be an error instead.
    An empty value is an error too: ``POOLKIT_STATEMENT_TIMEOUT=`` must not silently mean
    "no timeout" (write ``none`` for None; unset the variable for the configured value).
    """
    text = raw.strip()
    if not text:
        raise _Invalid(f"got an empty value {raw!r}; unset it to keep the value configured "
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
        raise _Invalid(f"got {raw!r}")
    pattern = _INTEGER_TEXT if cast is int else _NUMBER_TEXT
    if not pattern.fullmatch(text):
        lookalike = "_" in text or text.startswith("+") or any(
            char.isdigit() and not char.isascii() for char in text)
        raise _Invalid(f"got {raw!r}" + (" (ASCII digits only: no '+', '_' or other scripts' "
                                         "digits)" if lookalike else ""))
    try:
        return cast(text)
    except (ValueError, OverflowError) as error:
        raise _Invalid(f"got {raw!r}") from error


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(minimum: int, *, none: bool = False, minus_one: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if _is_int(value) and (value >= minimum or (minus_one and value == -1)):
            return value
        raise _Invalid(f"got {value!r}")

    return check


def _number(*, positive: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if ((_is_int(value) or (isinstance(value, float) and math.isfinite(value)))
                and (value > 0 or not positive)):
            return value
        raise _Invalid(f"got {value!r}")

    return check


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise _Invalid(f"got {value!r}")


def _choice(options: Iterable[str]) -> Callable[[Any], Any]:
    choices = tuple(options)

    def check(value: Any) -> Any:
        if value is None or value in choices:
            return value
        raise _Invalid(f"got {value!r}{did_you_mean(str(value), choices)}")

    return check


def _text(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    raise _Invalid(f"got {value!r}")


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def _knobs(*knobs: Knob) -> dict[str, Knob]:
    return {knob.name: knob for knob in knobs}


#: Every per-pool setting, in the order the README documents them. Defaults follow the seed's
#: ``create_engine(...)`` example.
KNOBS: dict[str, Knob] = _knobs(
    Knob("pool_size", 5, "an integer >= 1",
         "Connections kept open in the pool (per process).", _integer(1), int),
    Knob("max_overflow", 10, "an integer >= 0, or -1 for no limit",
         "Extra connections opened when the pool is exhausted, closed again on checkin.",
         _integer(0, minus_one=True), int),
    Knob("pool_timeout", 30, "a number of seconds > 0",
         "How long a checkout waits for a free connection before PoolTimeout.",
         _number(positive=True), float),
    Knob("pool_recycle", 3600, "an integer of seconds >= 1, or -1 to never recycle",
         "Connections older than this are replaced at their next checkout.",
         _integer(1, minus_one=True), int),
    Knob("pool_pre_ping", True, "True or False",
         "Test a connection before handing it out, replacing it if the server dropped it.",
         _boolean, bool),
    Knob("pool_use_lifo", False, "True or False",
         "Hand out the most recently returned connection first, so idle ones can time out.",
         _boolean, bool),
    Knob("connect_timeout", 10, "an integer of seconds >= 0 (0 waits forever)",
         "libpq's limit on opening a connection.", _integer(0), int),
    Knob("statement_timeout", 30000, "an integer of milliseconds >= 0 (0: no limit), or None",
         "Sent as -c statement_timeout at connect; None leaves the server's value.",
         _integer(0, none=True), int),
    Knob("application_name", "poolkit:{alias}:{host}:{pid}",
         "a template string using {alias}, {host} and {pid}, or None",
         "Names the pool's connections in pg_stat_activity; None leaves OPTIONS' value.",
         _text, str),
    Knob("preset", None, "one of " + ", ".join(f'"{n}"' for n in sizing.PRESETS) + ", or None",
         "A named size from the seed's table: sets pool_size and max_overflow.",
         _choice(sizing.PRESETS), str),
    Knob("sizing", None, "one of " + ", ".join(f'"{name}"' for name in sizing.SIZING_FORMULAS)
         + ", or None",
         "Compute pool_size (and, for production/auto, max_overflow) with a seed formula.",
         _choice(sizing.SIZING_FORMULAS), str),
    Knob("cores", None, "an integer >= 1, or None for os.cpu_count()",
         "CPU cores for the cores/production/auto formulas.", _integer(1, none=True), int),
    Knob("spindles", 0, "an integer >= 0", "Disk spindles for the cores formula.",
         _integer(0), int),
    Knob("concurrency", None, "an integer >= 1, or None",
         "Expected concurrent requests, for the async formula.", _integer(1, none=True), int),
    Knob("queries_per_request", 1, "a number > 0",
         "Average queries per request, for the async formula.", _number(positive=True), float),
    Knob("environment", None, 'a string such as "production", or None to read $ENV',
         'The auto formula uses the production rule when this is "production".', _text, str),
    Knob("async_pool_size", None, "an integer >= 1, or None for pool_size",
         "pool_size of the async engine's own pool.", _integer(1, none=True), int),
    Knob("async_max_overflow", None, "an integer >= 0, -1, or None for max_overflow",
         "max_overflow of the async engine's own pool.",
         _integer(0, none=True, minus_one=True), int),
    Knob("reset_on_return", "rollback", '"rollback", "reset_all" or "discard_all"',
         "What a checkin does besides the rollback: nothing, RESET ALL and friends (keeps "
         "temporary tables and plans), or DISCARD ALL.",
         _choice(("rollback", "reset_all", "discard_all")), str),
    Knob("pre_ping_mode", "socket", '"socket" or "query"',
         "How pool_pre_ping tests a connection: a zero-timeout look at its socket (a real "
         "ping only when the server sent something), or a round trip every checkout.",
         _choice(("socket", "query")), str),
    Knob("pgbouncer", None, '"transaction", "session", or None (a server, no PgBouncer)',
         "The pool connects through a PgBouncer in this pooling mode: no startup options; "
         "in transaction mode also no prepared statements and no server-side cursors.",
         _choice(("transaction", "session")), str),
    Knob("leak_detection_threshold", None, "a number of seconds > 0, or None (off)",
         "Log once, with the checkout's stack, a connection held longer than this.",
         _optional(_number(positive=True)), float),
    Knob("client_timeout", None, "a number of seconds > 0, or None (off)",
         "The longest one wait for the server's answer (a query, a fetch, a commit) may "
         "take before poolkit closes the connection and raises OperationalError; set it "
         "above statement_timeout.", _optional(_number(positive=True)), float),
)

#: Keys an ``ENGINES`` entry accepts besides the knobs. ``password`` beside ``url`` is the
#: way to give a secret that Django's error reports mask (their filter hides keys matching
#: ``PASS``; a password inside ``url`` shows in a DEBUG page and an admin e-mail).
ENGINE_ONLY_KEYS = ("url", "password")

#: Top-level keys of ``POOLKIT`` and what each holds.
TOP_LEVEL_KEYS: dict[str, str] = {
    "DEFAULTS": "pool settings applied to every pool",
    "DATABASES": "per-alias pool settings for aliases of settings.DATABASES",
    "ENGINES": "extra SQLAlchemy-only engines: name -> {url, pool settings}",
    "ENV_PREFIX": "prefix of the environment variables poolkit reads, or None to read none",
    "HEALTH": "health endpoints and poolcheck: timeout, cache, token, databases, policy",
    "ROUTING": "primary/replica clusters and read routing (see django_poolkit.clusters)",
    "DEPLOYMENT": "the process model (hosts, workers, threads) for the connection budget",
}

#: Top-level sections owned by other modules: key -> dotted path of a parser
#: ``parse(value, databases, report) -> object``. ``report(path, message, hint, check_id)``
#: records a problem; the parser's result lands in ``PoolkitSettings.sections[key]``. Each
#: feature validates its own section this way, and still only ``conf`` reads ``POOLKIT``.
SECTION_PARSERS: dict[str, str] = {
    "HEALTH": "django_poolkit.health.parse_settings",
    "ROUTING": "django_poolkit.clusters.parse",
    "DEPLOYMENT": "django_poolkit.deployment.parse",
}

#: Origins a resolved value can have, weakest first.
ORIGINS = ("default", "preset", "sizing", "setting", "url", "environment")


@dataclass(frozen=True)
class PoolSettings:
    """The resolved, validated settings of one pool (a ``DATABASES`` alias or an engine).

    Sizes are per process; ``origins`` maps each knob to where its value came from.
    """

    alias: str
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    pool_pre_ping: bool
    pool_use_lifo: bool
    connect_timeout: int
    statement_timeout: int | None
    application_name: str | None
    preset: str | None
    sizing: str | None
    cores: int | None
    spindles: int
    concurrency: int | None
    queries_per_request: float
    environment: str | None
    async_pool_size: int
    async_max_overflow: int
    url: str | None = None
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)
    reset_on_return: str = "rollback"
    pre_ping_mode: str = "socket"
    leak_detection_threshold: float | None = None
    pgbouncer: str | None = None
    client_timeout: float | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def capacity(self) -> int | None:
        """Most connections the sync pool opens at once, or None if overflow is unlimited."""
        return None if self.max_overflow < 0 else self.pool_size + self.max_overflow

    def __repr__(self) -> str:
        # The engine URL may carry a password: never show it.
        return f"<PoolSettings {self.alias!r} size={self.pool_size} overflow={self.max_overflow}>"


@dataclass(frozen=True)
class PoolkitSettings:
    """The whole validated configuration: one :class:`PoolSettings` per pool."""

    pools: Mapping[str, PoolSettings]
    env_prefix: str | None
    sections: Mapping[str, Any] = field(default_factory=dict)

    def for_alias(self, alias: str) -> PoolSettings | None:
        """The settings of ``alias``, or None when no such pool is configured."""
        return self.pools.get(alias)


def _nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate, ignoring case: ``"POOL_SIZE"`` in ``POOLKIT`` (Django's own
    settings are upper case) must still suggest ``"pool_size"``."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``'; did you mean "x"?'`` for the nearest candidate (case-insensitive), or ``""``.
    Every section parser uses it, so suggestions read the same everywhere."""
    near = _nearest(word, candidates)
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


def _path(*parts: str) -> str:
    return "POOLKIT" + "".join(f'["{part}"]' for part in parts)


class _Collector:
    """Gathers every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str, hint: str, check_id: str) -> None:
        self.problems.append(Problem(path, message, hint, check_id))


@dataclass
class _Layer:
    origin: str
    values: dict[str, Any]


def _read_knobs(
    section: Any,
    path_parts: tuple[str, ...],
    problems: _Collector,
    *,
    extra_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check one dict of knobs from ``POOLKIT`` (Python values: no text conversion)."""
    path = _path(*path_parts)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        problems.add(path, f"must be a dict of pool settings, got {type(section).__name__}",
                     "Write a dict such as {\"pool_size\": 10}.", E_NOT_A_DICT)
        return {}
    accepted = (*KNOBS, *extra_keys)
    values: dict[str, Any] = {}
    for key, value in section.items():
        key_path = _path(*path_parts, str(key))
        if key in extra_keys:
            values[key] = value
            continue
        knob = KNOBS.get(key)
        if knob is None:
            problems.add(key_path, f"unknown key{did_you_mean(str(key), accepted)}",
                         accepted_keys(accepted), E_UNKNOWN_KEY)
            continue
        try:
            values[key] = knob.parse(value, from_text=False)
        except _Invalid as error:
            problems.add(key_path, f"must be {knob.accepted}, {error}",
                         _quoted_hint(knob, value) or knob.doc, E_BAD_VALUE)
    return values


def _text_hint(knob: Knob) -> str:
    """The hint for a value that came as text: how to spell a boolean, else what it does."""
    if knob.cast is bool:
        return "Write true or false (yes/no, on/off and 1/0 work too)."
    return knob.doc


def _quoted_hint(knob: Knob, value: Any) -> str | None:
    """For ``"10"`` where 10 belongs: say so, since only the environment and URLs are text."""
    if knob.cast is str or not isinstance(value, str):
        return None
    try:
        parsed = knob.parse(value, from_text=True)
    except _Invalid:
        return None
    return (f"Write {parsed!r} without quotes: only environment variables and DATABASE_URL "
            "parameters are read as text.")


def _url_options(alias: str, database: Mapping[str, Any], problems: _Collector) -> dict[str, Any]:
    """Pool knobs found in ``DATABASES[alias]["OPTIONS"]`` (``DATABASE_URL`` query params)."""
    options = database.get("OPTIONS") or {}
    values: dict[str, Any] = {}
    for key, value in options.items():
        knob = KNOBS.get(key)
        if knob is None:
            continue
        try:
            values[key] = knob.parse(value, from_text=True)
        except _Invalid as error:
            problems.add(f'DATABASES["{alias}"]["OPTIONS"]["{key}"]',
                         f"must be {knob.accepted}, {error}", _text_hint(knob), E_BAD_VALUE)
    return values


def _env_key(alias: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in alias).upper()


def _read_environment(
    prefix: str | None,
    environ_: Mapping[str, str],
    databases: Iterable[str],
    engines: Iterable[str],
    problems: _Collector,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split ``POOLKIT_*`` variables into global knobs and per-alias knobs, checking each.

    ``<ALIAS>__URL`` is accepted for ``ENGINES`` names only: a ``DATABASES`` alias connects
    where ``settings.DATABASES`` says, and a URL beside it would silently point its pool
    elsewhere.
    """
    global_values: dict[str, Any] = {}
    per_alias: dict[str, dict[str, Any]] = {}
    if not prefix:
        return global_values, per_alias
    engine_names = [name for name in engines if name not in databases]
    aliases: dict[str, str] = {}
    clashes: dict[str, list[str]] = {}  # "replica-1" and "replica_1" are both REPLICA_1
    for name in (*databases, *engine_names):
        key = _env_key(name)
        if key in aliases:
            clashes.setdefault(key, [aliases[key]]).append(name)
        aliases[key] = name
    for variable in sorted(environ_):
        if not variable.startswith(prefix):
            continue
        rest = variable[len(prefix):]
        path = f"environment variable {variable}"
        alias: str | None = None
        if "__" in rest:
            alias_key, knob_key = rest.split("__", 1)
            alias = aliases.get(alias_key)
            if alias is None:
                near = _nearest(alias_key, aliases)
                problems.add(path, f'names no database or engine "{alias_key}"'
                             + (f'; did you mean "{prefix}{near}__{knob_key}"?' if near else ""),
                             "Per-alias variables are named "
                             f"{prefix}<ALIAS>__<SETTING>, e.g. {prefix}DEFAULT__POOL_SIZE.",
                             E_ENVIRONMENT)
                continue
            if alias_key in clashes:
                problems.add(path, f"is ambiguous: {alias_key} stands for "
                             + " and ".join(f'"{name}"' for name in clashes[alias_key]),
                             'Set this per alias in POOLKIT["DATABASES"] or POOLKIT["ENGINES"] '
                             "instead, or rename one of them.", E_ENVIRONMENT)
                continue
        else:
            knob_key = rest
        name = knob_key.lower()
        accepted = [*KNOBS, *ENGINE_ONLY_KEYS] if alias in engine_names else list(KNOBS)
        if alias is not None and name in ENGINE_ONLY_KEYS and name not in accepted:
            problems.add(path, f'sets a {name}, but "{alias}" is a DATABASES alias',
                         f'Its connection comes from settings.DATABASES["{alias}"] (e.g. '
                         f"DATABASE_URL); only POOLKIT[\"ENGINES\"] entries take a {name}.",
                         E_ENVIRONMENT)
            continue
        if name not in accepted:
            near = _nearest(knob_key, [key.upper() for key in accepted])
            scope = f"{alias_key}__" if alias else ""
            problems.add(path, f'unknown setting "{knob_key}"'
                         + (f'; did you mean "{prefix}{scope}{near}"?' if near else ""),
                         f"Variables are {prefix}<SETTING> or {prefix}<ALIAS>__<SETTING> with "
                         "SETTING one of " + ", ".join(key.upper() for key in accepted) + ".",
                         E_ENVIRONMENT)
            continue
        if name in ENGINE_ONLY_KEYS and not environ_[variable].strip():
            problems.add(path, "is empty", f"Unset it, or give the engine's {name}.",
                         E_ENVIRONMENT)
            continue
        try:
            value = (environ_[variable] if name in ENGINE_ONLY_KEYS
                     else KNOBS[name].parse(environ_[variable], from_text=True))
        except _Invalid as error:
            problems.add(path, f"must be {KNOBS[name].accepted}, {error}",
                         _text_hint(KNOBS[name]), E_ENVIRONMENT)
            continue
        target = per_alias.setdefault(alias, {}) if alias else global_values
        target[name] = value
    return global_values, per_alias


def _resolve(
    alias: str,
    layers: list[_Layer],
    problems: _Collector,
    path: str,
    environ_: Mapping[str, str],
) -> PoolSettings | None:
    """Merge the layers of one pool and apply its preset and sizing formula.

    A preset and a formula each size the pool from the layer that set them; when both apply,
    the one from the stronger layer wins (in the same layer the formula wins for the keys it
    computes, so ``high_traffic`` + ``cores`` keeps the preset's overflow). ``$ENV`` for the
    auto formula is read from ``environ_``, not ``os.environ``, so the result depends only
    on the inputs.
    """
    problems_before = len(problems.problems)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    strength: dict[str, int] = {}
    for index, layer in enumerate(layers):
        for key, value in layer.values.items():
            values[key] = value
            origins[key] = layer.origin
            strength[key] = index

    derived: dict[str, tuple[int, str, Any]] = {}

    def derive(key: str, index: int, origin: str, value: int) -> None:
        if key not in derived or derived[key][0] <= index:
            derived[key] = (index, origin, value)

    preset = values.get("preset")
    if preset is not None:
        size = sizing.PRESETS[preset]
        for key, value in size._asdict().items():
            derive(key, strength["preset"], f"preset:{preset}", value)

    formula = values.get("sizing")
    if formula is not None:
        cores = values.get("cores") or sizing.default_cores()
        overflow = values.get("max_overflow", KNOBS["max_overflow"].default)
        result: sizing.PoolSize | None = None
        if formula == "cores":
            result = sizing.cores_pool_size(cores, values.get("spindles", 0), overflow)
        elif formula == "async":
            concurrency = values.get("concurrency")
            if concurrency is None:
                problems.add(path, 'sizing "async" needs "concurrency" (expected concurrent '
                             "requests)", 'Set "concurrency", or pick another sizing formula.',
                             E_CONFLICT)
            else:
                result = sizing.async_pool_size(
                    concurrency, values.get("queries_per_request", 1), overflow)
        elif formula == "production":
            result = sizing.production_pool_size(cores)
        else:
            environment = values.get("environment")
            if environment is None:
                environment = environ_.get("ENV", "")
            result = sizing.auto_pool_size(cores, environment)
        if result is not None:
            derive("pool_size", strength["sizing"], f"sizing:{formula}", result.pool_size)
            if formula in ("production", "auto"):
                derive("max_overflow", strength["sizing"], f"sizing:{formula}",
                       result.max_overflow)

    for key, (index, origin, value) in derived.items():
        # An explicit value in the same layer as the preset, or a stronger one, wins.
        if key not in strength or strength[key] < index:
            values[key] = value
            origins[key] = origin
    for key in ("async_pool_size", "async_max_overflow"):
        if values.get(key) is None:
            values[key] = values[key.removeprefix("async_")]
            origins[key] = origins[key.removeprefix("async_")]
    if len(problems.problems) > problems_before:
        return None
    return PoolSettings(alias=alias, origins=origins, **values)


def parse_url(text: str) -> URL:
    """SQLAlchemy's ``make_url``, reading the user and password up to the *last* ``@`` before
    the path, as django-environ and ``urllib`` do.

    SQLAlchemy's own grammar stops the password at the first ``@``: in
    ``postgresql://app:p@tail@host/db`` the host would read ``tail@host``, and commands, logs
    and errors would print the rest of the password as part of the host name.
    """
    scheme, separator, rest = text.partition("://")
    if separator:
        before_query = rest.split("?", 1)[0]
        at = before_query.rfind("@")
        if at > 0 and "@" in before_query[:at]:
            user, colon, password = before_query[:at].partition(":")
            quoted = (user.replace("@", "%40") + colon + password.replace("@", "%40"))
            text = f"{scheme}://{quoted}{rest[at:]}"
    return make_url(text)


def _engine_url(name: str, value: Any, problems: _Collector) -> str | None:
    path = _path("ENGINES", name, "url")
    if not isinstance(value, str) or not value:
        problems.add(path, "is required: the database URL this engine connects to",
                     'Add "url": "postgresql://user@host/dbname" (the password may come from '
                     'its "password" key or the environment).', E_ENGINE_URL)
        return None
    try:
        url = parse_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Never echo the URL: it may hold a password.
        problems.add(path, "is not a database URL SQLAlchemy can parse",
                     "Use the form postgresql://user:password@host:port/dbname.", E_ENGINE_URL)
        return None
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        problems.add(path, f'uses "{url.get_backend_name()}", which poolkit does not pool',
                     "Use a postgresql:// or sqlite:// URL.", E_ENGINE_URL)
        return None
    return value


def _engine_password(name: str, value: Any, problems: _Collector) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    # Never echo the value: it is meant to be a password.
    problems.add(_path("ENGINES", name, "password"),
                 f"must be a non-empty string or None, got a {type(value).__name__}"
                 + (" that is empty" if value == "" else ""),
                 "Give the password as a string; it wins over one in the url.", E_ENGINE_URL)
    return None


def build_settings(
    poolkit: Any, databases: Mapping[str, Mapping[str, Any]], environ_: Mapping[str, str]
) -> tuple[PoolkitSettings | None, list[Problem]]:
    """Resolve and validate the configuration from explicit inputs.

    Returns the settings (None when any problem was found) and every problem. Pure apart
    from ``os.cpu_count()``, so tests can pass any ``POOLKIT``, ``DATABASES`` and environment.
    """
    problems = _Collector()
    # Sections registered by other modules are top-level keys too.
    top_level = list(dict.fromkeys([*TOP_LEVEL_KEYS, *SECTION_PARSERS]))
    if poolkit is None:
        poolkit = {}
    if not isinstance(poolkit, Mapping):
        problems.add("POOLKIT", f"must be a dict, got {type(poolkit).__name__}",
                     "Write POOLKIT = {...} with the keys " + ", ".join(top_level) + ".",
                     E_NOT_A_DICT)
        return None, problems.problems
    for key in poolkit:
        if key not in top_level:
            problems.add(_path(str(key)), f"unknown key{did_you_mean(str(key), top_level)}",
                         accepted_keys(top_level), E_UNKNOWN_KEY)
    sections = {
        key: import_string(parser)(poolkit.get(key), databases, problems.add)
        for key, parser in SECTION_PARSERS.items()
    }

    prefix = poolkit.get("ENV_PREFIX", DEFAULT_ENV_PREFIX)
    if prefix is not None and not (isinstance(prefix, str) and prefix):
        problems.add(_path("ENV_PREFIX"), f"must be a non-empty string or None, got {prefix!r}",
                     f'The default is "{DEFAULT_ENV_PREFIX}"; None turns environment '
                     "variables off.", E_BAD_VALUE)
        prefix = None

    defaults = _read_knobs(poolkit.get("DEFAULTS"), ("DEFAULTS",), problems)
    per_database = _sections(poolkit.get("DATABASES"), "DATABASES", problems)
    per_engine = _sections(poolkit.get("ENGINES"), "ENGINES", problems)

    for alias, section in per_database.items():
        if alias not in databases:
            problems.add(_path("DATABASES", alias),
                         f'unknown database alias{did_you_mean(alias, databases)}',
                         "settings.DATABASES has: "
                         + ", ".join(f'"{name}"' for name in databases) + ".", E_UNKNOWN_ALIAS)
            # Still check its keys, so one run reports every problem.
            _read_knobs(section, ("DATABASES", alias), problems)
    for name in per_engine:
        if name in databases:
            problems.add(_path("ENGINES", name),
                         "has the name of a DATABASES alias",
                         f'Configure that alias under POOLKIT["DATABASES"]["{name}"], or give '
                         "the engine another name.", E_CONFLICT)

    env_global, env_alias = _read_environment(prefix, environ_, databases, per_engine, problems)
    builtin = _Layer("default", {name: knob.default for name, knob in KNOBS.items()})

    pools: dict[str, PoolSettings] = {}
    for alias, database in databases.items():
        own = _read_knobs(per_database.get(alias), ("DATABASES", alias), problems)
        layers = [builtin, _Layer("setting", defaults), _Layer("setting", own),
                  _Layer("url", _url_options(alias, database, problems)),
                  _Layer("environment", env_global),
                  _Layer("environment", env_alias.get(alias, {}))]
        resolved = _resolve(alias, layers, problems, _path("DATABASES", alias), environ_)
        if resolved is not None:
            pools[alias] = resolved
    for name, section in per_engine.items():
        own = _read_knobs(section, ("ENGINES", name), problems, extra_keys=ENGINE_ONLY_KEYS)
        env_own = env_alias.get(name, {})
        url = _engine_url(name, env_own.pop("url", own.pop("url", None)), problems)
        password = _engine_password(name, env_own.pop("password", own.pop("password", None)),
                                    problems)
        layers = [builtin, _Layer("setting", defaults), _Layer("setting", own),
                  _Layer("environment", env_global), _Layer("environment", env_own)]
        resolved = _resolve(name, layers, problems, _path("ENGINES", name), environ_)
        if resolved is not None and url is not None and name not in databases:
            pools[name] = replace(resolved, url=url, password=password)

    if problems.problems:
        return None, problems.problems
    return PoolkitSettings(pools=pools, env_prefix=prefix, sections=sections), []


def _sections(value: Any, name: str, problems: _Collector) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        if name == "ENGINES":
            problems.add(_path(name), "must be a dict of engine name -> {url, pool settings}, "
                         f"got {type(value).__name__}",
                         'Write {"analytics": {"url": "postgresql://user@host/dbname"}}.',
                         E_NOT_A_DICT)
        else:
            problems.add(_path(name), "must be a dict of alias -> pool settings, got "
                         f"{type(value).__name__}", 'Write {"default": {"pool_size": 10}}.',
                         E_NOT_A_DICT)
        return {}
    return {str(alias): section for alias, section in value.items()}


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
