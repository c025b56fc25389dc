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
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import environ
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string
from sqlalchemy.engine import make_url
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
    "build_settings",
    "get_settings",
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
        """Return the checked value, converting text from the environment or a URL first."""
        if from_text and isinstance(value, str):
            value = _from_text(value, self.cast)
        return self.check(value)


def _from_text(raw: str, cast: type) -> Any:
    if raw.strip().lower() in ("", "none", "null"):
        return None
    if cast is str:
        return raw
    try:
        return environ.Env.parse_value(raw, cast)
    except ValueError as error:
        raise _Invalid(f"cannot read {raw!r} as {cast.__name__}") from error


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
        if (_is_int(value) or isinstance(value, float)) and (value > 0 or not positive):
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
        raise _Invalid(f"got {value!r}{_did_you_mean(str(value), choices)}")

    return check


def _text(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    raise _Invalid(f"got {value!r}")


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
)

#: Keys an ``ENGINES`` entry accepts besides the knobs.
ENGINE_ONLY_KEYS = ("url",)

#: Top-level keys of ``POOLKIT`` and what each holds.
TOP_LEVEL_KEYS: dict[str, str] = {
    "DEFAULTS": "pool settings applied to every pool",
    "DATABASES": "per-alias pool settings for aliases of settings.DATABASES",
    "ENGINES": "extra SQLAlchemy-only engines: name -> {url, pool settings}",
    "ENV_PREFIX": "prefix of the environment variables poolkit reads, or None to read none",
}

#: Top-level sections owned by other modules: key -> dotted path of a parser
#: ``parse(value, databases, report) -> object``. ``report(path, message, hint, check_id)``
#: records a problem; the parser's result lands in ``PoolkitSettings.sections[key]``. Each
#: feature validates its own section this way, and still only ``conf`` reads ``POOLKIT``.
SECTION_PARSERS: dict[str, str] = {}

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


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f'; did you mean "{match[0]}"?' if match else ""


def _accepted_keys(keys: Iterable[str]) -> str:
    return "Accepted keys: " + ", ".join(f'"{key}"' for key in keys) + "."


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
            problems.add(key_path, f"unknown key{_did_you_mean(str(key), accepted)}",
                         _accepted_keys(accepted), E_UNKNOWN_KEY)
            continue
        try:
            values[key] = knob.parse(value, from_text=False)
        except _Invalid as error:
            problems.add(key_path, f"must be {knob.accepted}, {error}", knob.doc, E_BAD_VALUE)
    return values


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
                         f"must be {knob.accepted}, {error}", knob.doc, E_BAD_VALUE)
    return values


def _env_key(alias: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in alias).upper()


def _read_environment(
    prefix: str | None, environ_: Mapping[str, str], names: Iterable[str], problems: _Collector
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split ``POOLKIT_*`` variables into global knobs and per-alias knobs, checking each."""
    global_values: dict[str, Any] = {}
    per_alias: dict[str, dict[str, Any]] = {}
    if not prefix:
        return global_values, per_alias
    aliases = {_env_key(name): name for name in names}
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
                problems.add(path, f'names no database or engine "{alias_key}"'
                             f"{_did_you_mean(alias_key, aliases)}",
                             "Per-alias variables are named "
                             f"{prefix}<ALIAS>__<SETTING>, e.g. {prefix}DEFAULT__POOL_SIZE.",
                             E_ENVIRONMENT)
                continue
        else:
            knob_key = rest
        name = knob_key.lower()
        accepted = [*KNOBS, *ENGINE_ONLY_KEYS] if alias else list(KNOBS)
        if name not in accepted:
            suggestion = _did_you_mean(knob_key, [key.upper() for key in accepted])
            problems.add(path, f"unknown setting {knob_key}{suggestion}",
                         f"Variables are {prefix}<SETTING> or {prefix}<ALIAS>__<SETTING> with "
                         "SETTING one of " + ", ".join(key.upper() for key in accepted) + ".",
                         E_ENVIRONMENT)
            continue
        try:
            value = (environ_[variable] if name in ENGINE_ONLY_KEYS
                     else KNOBS[name].parse(environ_[variable], from_text=True))
        except _Invalid as error:
            problems.add(path, f"must be {KNOBS[name].accepted}, {error}", KNOBS[name].doc,
                         E_ENVIRONMENT)
            continue
        target = per_alias.setdefault(alias, {}) if alias else global_values
        target[name] = value
    return global_values, per_alias


def _resolve(
    alias: str, layers: list[_Layer], problems: _Collector, path: str
) -> PoolSettings | None:
    """Merge the layers of one pool and apply its preset and sizing formula."""
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
    preset = values.get("preset")
    if preset is not None:
        size = sizing.PRESETS[preset]
        for key, value in size._asdict().items():
            derived[key] = (strength["preset"], f"preset:{preset}", value)

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
                environment = os.environ.get("ENV", "")
            result = sizing.auto_pool_size(cores, environment)
        if result is not None:
            derived["pool_size"] = (strength["sizing"], f"sizing:{formula}", result.pool_size)
            if formula in ("production", "auto"):
                derived["max_overflow"] = (
                    strength["sizing"], f"sizing:{formula}", result.max_overflow)

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


def _engine_url(name: str, value: Any, problems: _Collector) -> str | None:
    path = _path("ENGINES", name, "url")
    if not isinstance(value, str) or not value:
        problems.add(path, "is required: the database URL this engine connects to",
                     'Add "url": "postgresql://user@host/dbname" (the password may come from '
                     "the environment).", E_ENGINE_URL)
        return None
    try:
        url = make_url(value)
    except ArgumentError:
        # Never echo the URL: it may hold a password.
        problems.add(path, "is not a database URL SQLAlchemy can parse",
                     "Use the form postgresql://user:password@host:port/dbname.", E_ENGINE_URL)
        return None
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        problems.add(path, f'uses "{url.get_backend_name()}", which poolkit does not pool',
                     "Use a postgresql:// or sqlite:// URL.", E_ENGINE_URL)
        return None
    return value


def build_settings(
    poolkit: Any, databases: Mapping[str, Mapping[str, Any]], environ_: Mapping[str, str]
) -> tuple[PoolkitSettings | None, list[Problem]]:
    """Resolve and validate the configuration from explicit inputs.

    Returns the settings (None when any problem was found) and every problem. Pure apart
    from ``os.cpu_count()``, so tests can pass any ``POOLKIT``, ``DATABASES`` and environment.
    """
    problems = _Collector()
    if poolkit is None:
        poolkit = {}
    if not isinstance(poolkit, Mapping):
        problems.add("POOLKIT", f"must be a dict, got {type(poolkit).__name__}",
                     "Write POOLKIT = {...} with the keys " + ", ".join(TOP_LEVEL_KEYS) + ".",
                     E_NOT_A_DICT)
        return None, problems.problems
    for key in poolkit:
        if key not in TOP_LEVEL_KEYS:
            problems.add(_path(str(key)), f"unknown key{_did_you_mean(str(key), TOP_LEVEL_KEYS)}",
                         _accepted_keys(TOP_LEVEL_KEYS), E_UNKNOWN_KEY)
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

    for alias in per_database:
        if alias not in databases:
            problems.add(_path("DATABASES", alias),
                         f'unknown database alias{_did_you_mean(alias, databases)}',
                         "settings.DATABASES has: "
                         + ", ".join(f'"{name}"' for name in databases) + ".", E_UNKNOWN_ALIAS)
    for name in per_engine:
        if name in databases:
            problems.add(_path("ENGINES", name),
                         "has the name of a DATABASES alias",
                         f'Configure that alias under POOLKIT["DATABASES"]["{name}"], or give '
                         "the engine another name.", E_CONFLICT)

    env_global, env_alias = _read_environment(
        prefix, environ_, [*databases, *per_engine], problems)
    builtin = _Layer("default", {name: knob.default for name, knob in KNOBS.items()})

    pools: dict[str, PoolSettings] = {}
    for alias, database in databases.items():
        own = _read_knobs(per_database.get(alias), ("DATABASES", alias), problems)
        layers = [builtin, _Layer("setting", defaults), _Layer("setting", own),
                  _Layer("url", _url_options(alias, database, problems)),
                  _Layer("environment", env_global),
                  _Layer("environment", env_alias.get(alias, {}))]
        resolved = _resolve(alias, layers, problems, _path("DATABASES", alias))
        if resolved is not None:
            pools[alias] = resolved
    for name, section in per_engine.items():
        own = _read_knobs(section, ("ENGINES", name), problems, extra_keys=ENGINE_ONLY_KEYS)
        env_own = env_alias.get(name, {})
        url = _engine_url(name, env_own.pop("url", own.pop("url", None)), problems)
        layers = [builtin, _Layer("setting", defaults), _Layer("setting", own),
                  _Layer("environment", env_global), _Layer("environment", env_own)]
        resolved = _resolve(name, layers, problems, _path("ENGINES", name))
        if resolved is not None and url is not None and name not in databases:
            pools[name] = _with_url(resolved, url)

    if problems.problems:
        return None, problems.problems
    return PoolkitSettings(pools=pools, env_prefix=prefix, sections=sections), []


def _with_url(pool: PoolSettings, url: str) -> PoolSettings:
    return replace(pool, url=url)


def _sections(value: Any, name: str, problems: _Collector) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(_path(name), f"must be a dict of alias -> pool settings, got "
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
