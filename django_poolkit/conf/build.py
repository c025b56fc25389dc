"""Building the configuration: merge the layers of each pool (weakest first), apply its
preset and sizing formula, check the ``ENGINES`` URLs, and run the parsers of the other
sections, collecting every problem. Pure apart from ``os.cpu_count()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from django.utils.module_loading import import_string
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .._schema import Collector, accepted_keys, did_you_mean, key_path
from ..check_ids import (
    E_BAD_VALUE,
    E_CONFLICT,
    E_ENGINE_URL,
    E_NOT_A_DICT,
    E_UNKNOWN_ALIAS,
    E_UNKNOWN_KEY,
)
from ..exceptions import Problem
from ..ops import sizing
from .knobs import (
    DEFAULT_ENV_PREFIX,
    ENGINE_ONLY_KEYS,
    KNOBS,
    ORM_DEFAULTS,
    POOLED_BACKEND,
    SECTION_PARSERS,
    TOP_LEVEL_KEYS,
    PoolkitSettings,
    PoolSettings,
)
from .sources import blank_url_knobs, read_environment, read_knobs, url_options

__all__ = ["build_settings", "parse_url"]


@dataclass
class _Layer:
    origin: str
    values: dict[str, Any]



def _resolve(
    alias: str,
    layers: list[_Layer],
    problems: Collector,
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
            quoted = user.replace("@", "%40") + colon + password.replace("@", "%40")
            text = f"{scheme}://{quoted}{rest[at:]}"
    return make_url(text)


def _engine_url(name: str, value: Any, problems: Collector) -> str | None:
    path = key_path("ENGINES", name, "url")
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


def _engine_password(name: str, value: Any, problems: Collector) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    # Never echo the value: it is meant to be a password.
    problems.add(key_path("ENGINES", name, "password"),
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
    problems = Collector()
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
            problems.add(key_path(str(key)), f"unknown key{did_you_mean(str(key), top_level)}",
                         accepted_keys(top_level), E_UNKNOWN_KEY)
    sections = {
        key: import_string(parser)(poolkit.get(key), databases, problems.add)
        for key, parser in SECTION_PARSERS.items()
    }

    prefix = poolkit.get("ENV_PREFIX", DEFAULT_ENV_PREFIX)
    if prefix is not None and not (isinstance(prefix, str) and prefix):
        problems.add(key_path("ENV_PREFIX"), f"must be a non-empty string or None, got {prefix!r}",
                     f'The default is "{DEFAULT_ENV_PREFIX}"; None turns environment '
                     "variables off.", E_BAD_VALUE)
        prefix = None

    defaults = read_knobs(poolkit.get("DEFAULTS"), ("DEFAULTS",), problems)
    per_database = _sections(poolkit.get("DATABASES"), "DATABASES", problems)
    per_engine = _sections(poolkit.get("ENGINES"), "ENGINES", problems)

    for alias, section in per_database.items():
        if alias not in databases:
            problems.add(key_path("DATABASES", alias),
                         f'unknown database alias{did_you_mean(alias, databases)}',
                         "settings.DATABASES has: "
                         + ", ".join(f'"{name}"' for name in databases) + ".", E_UNKNOWN_ALIAS)
            # Still check its keys, so one run reports every problem.
            read_knobs(section, ("DATABASES", alias), problems)
    for name in per_engine:
        if name in databases:
            problems.add(key_path("ENGINES", name),
                         "has the name of a DATABASES alias",
                         f'Configure that alias under POOLKIT["DATABASES"]["{name}"], or give '
                         "the engine another name.", E_CONFLICT)

    env_global, env_alias = read_environment(prefix, environ_, databases, per_engine, problems)
    builtin = _Layer("default", {name: knob.default for name, knob in KNOBS.items()})
    orm_builtin = _Layer("default", {**builtin.values, **ORM_DEFAULTS})

    pools: dict[str, PoolSettings] = {}
    for alias, database in databases.items():
        own = read_knobs(per_database.get(alias), ("DATABASES", alias), problems)
        serves_orm = database.get("ENGINE") == POOLED_BACKEND
        blank_url_knobs(alias, database, environ_, problems)
        layers = [orm_builtin if serves_orm else builtin, _Layer("setting", defaults),
                  _Layer("setting", own),
                  _Layer("url", url_options(alias, database, problems)),
                  _Layer("environment", env_global),
                  _Layer("environment", env_alias.get(alias, {}))]
        resolved = _resolve(alias, layers, problems, key_path("DATABASES", alias), environ_)
        if resolved is not None:
            pools[alias] = resolved
    for name, section in per_engine.items():
        own = read_knobs(section, ("ENGINES", name), problems, extra_keys=ENGINE_ONLY_KEYS)
        env_own = env_alias.get(name, {})
        url = _engine_url(name, env_own.pop("url", own.pop("url", None)), problems)
        password = _engine_password(name, env_own.pop("password", own.pop("password", None)),
                                    problems)
        layers = [builtin, _Layer("setting", defaults), _Layer("setting", own),
                  _Layer("environment", env_global), _Layer("environment", env_own)]
        resolved = _resolve(name, layers, problems, key_path("ENGINES", name), environ_)
        if resolved is not None and url is not None and name not in databases:
            pools[name] = replace(resolved, url=url, password=password)

    if problems.problems:
        return None, problems.problems
    return PoolkitSettings(pools=pools, env_prefix=prefix, sections=sections), []


def _sections(value: Any, name: str, problems: Collector) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        if name == "ENGINES":
            problems.add(key_path(name), "must be a dict of engine name -> {url, pool settings}, "
                         f"got {type(value).__name__}",
                         'Write {"analytics": {"url": "postgresql://user@host/dbname"}}.',
                         E_NOT_A_DICT)
        else:
            problems.add(key_path(name), "must be a dict of alias -> pool settings, got "
                         f"{type(value).__name__}", 'Write {"default": {"pool_size": 10}}.',
                         E_NOT_A_DICT)
        return {}
    return {str(alias): section for alias, section in value.items()}


