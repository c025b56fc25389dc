"""Reading the layers of a configuration: dicts of knobs from ``POOLKIT``, pool knobs in a
``DATABASE_URL``'s query (``OPTIONS``), and ``POOLKIT_*`` environment variables. Each value is
checked by its knob's rule; text is read strictly (a typo is an error, never a silent False).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .._schema import Collector, Field, Invalid, did_you_mean, key_path, nearest, read_fields
from ..check_ids import E_BAD_VALUE, E_CONFLICT, E_ENVIRONMENT, E_NOT_A_DICT, E_UNKNOWN_KEY
from ..ops import sizing
from .knobs import DEFAULT_ENV_PREFIX, ENGINE_ONLY_KEYS, KNOBS, OPTION_FIELDS

__all__ = ["blank_url_knobs", "read_environment", "read_knobs", "url_options"]


def read_knobs(
    section: Any,
    path_parts: tuple[str, ...],
    problems: Collector,
    *,
    extra_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check one dict of knobs from ``POOLKIT`` (Python values: no text conversion);
    ``extra_keys`` (an engine's ``url``) pass through unchecked."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        problems.add(key_path(*path_parts),
                     f"must be a dict of pool settings, got {type(section).__name__}",
                     "Write a dict such as {\"pool_size\": 10}.", E_NOT_A_DICT)
        return {}
    values = read_fields(section, KNOBS, lambda key: key_path(*path_parts, key), problems.add,
                         unknown_key_id=E_UNKNOWN_KEY, bad_value_id=E_BAD_VALUE,
                         skip=extra_keys, accepted=(*KNOBS, *extra_keys),
                         hint=lambda knob, value: _quoted_hint(knob, value, path_parts))
    values.update({key: section[key] for key in extra_keys if key in section})
    return values


def _text_hint(knob: Field) -> str:
    """The hint for a value that came as text: how to spell a boolean, else what it does."""
    if knob.cast is bool:
        return "Write true or false (yes/no, on/off and 1/0 work too)."
    return knob.doc


def _quoted_hint(knob: Field, value: Any, path_parts: tuple[str, ...] = ()) -> str | None:
    """For ``"10"`` where 10 belongs: say what to do. It is text either because it was
    quoted or because settings.py read it from the environment (``os.environ.get()``), so
    name both fixes: ``int(...)`` there, or the variable poolkit reads and converts itself.
    For a sizing name given as ``preset`` (or the reverse), name the right key."""
    if isinstance(value, str) and knob.name in ("preset", "sizing"):
        other = "sizing" if knob.name == "preset" else "preset"
        names = sizing.SIZING_FORMULAS if other == "sizing" else tuple(sizing.PRESETS)
        if value in names:
            return f'"{value}" is a {other} value: write "{other}": "{value}".'
        return None
    if knob.cast is str or not isinstance(value, str):
        return None
    try:
        parsed = knob.parse(value, from_text=True)
    except Invalid:
        return None
    scope = (_env_key(path_parts[1]) + "__" if len(path_parts) == 2
             and path_parts[0] in ("DATABASES", "ENGINES") else "")
    variable = f"{DEFAULT_ENV_PREFIX}{scope}{knob.name.upper()}"
    wrap = ("" if knob.cast is bool else
            f", or, when settings.py reads it from the environment, wrap it in "
            f"{knob.cast.__name__}(...)")
    return (f"Got the text {value!r}: write {parsed!r} without quotes{wrap}, or drop the key "
            f"and set the environment variable {variable}={value} (environment variables "
            "and DATABASE_URL parameters are converted).")


#: The pooled ORM backend's ENGINE (the one that reads pool knobs out of OPTIONS).
POOLED_ENGINE = "django_poolkit.db.backends.postgresql"
#: PostgreSQL backends whose OPTIONS go to psycopg (so unknown keys fail at connect).
_POSTGRESQL_ENGINES = (POOLED_ENGINE, "django.db.backends.postgresql",
                       "django.contrib.gis.db.backends.postgis")
#: OPTIONS keys Django's PostgreSQL backend or ``psycopg.connect()`` take besides libpq's.
_DRIVER_OPTIONS = frozenset({
    "isolation_level", "server_side_binding", "assume_role", "pool", "autocommit",
    "prepare_threshold", "context", "row_factory", "cursor_factory"})
_libpq_keywords: frozenset[str] | None = None


def _connection_option(key: str) -> bool:
    """Whether ``key`` is a libpq connection parameter or a driver/Django option."""
    global _libpq_keywords
    if key in _DRIVER_OPTIONS:
        return True
    if _libpq_keywords is None:
        try:
            from psycopg import pq

            _libpq_keywords = frozenset(
                option.keyword.decode() for option in pq.Conninfo.get_defaults())
        except Exception:  # no usable libpq: psycopg reports that itself at connect
            return True
    return key in _libpq_keywords


def url_options(alias: str, database: Mapping[str, Any], problems: Collector) -> dict[str, Any]:
    """Pool knobs found in ``DATABASES[alias]["OPTIONS"]`` (``DATABASE_URL`` query params).

    On a PostgreSQL alias, a key that is neither a knob nor a connection parameter is a
    misspelling (psycopg would refuse it at the first connect, without a suggestion); knobs
    on an alias of another backend would reach its driver, which refuses them too."""
    options = database.get("OPTIONS") or {}
    engine = database.get("ENGINE")
    values: dict[str, Any] = {}
    for key, option in OPTION_FIELDS.items():
        if key in options:
            given = options[key]
            try:  # text from a URL is read as text; Python values (an IntEnum) as they are
                option.parse(given, from_text=isinstance(given, str))
            except Invalid as error:
                problems.add(f'DATABASES["{alias}"]["OPTIONS"]["{key}"]', option.message(error),
                             option.hint or option.doc, E_BAD_VALUE)
    for key, value in options.items():
        key = str(key)
        knob = KNOBS.get(key)
        path = f'DATABASES["{alias}"]["OPTIONS"]["{key}"]'
        if knob is None:
            if engine in _POSTGRESQL_ENGINES and not _connection_option(key):
                problems.add(path, "is neither a pool parameter nor a PostgreSQL connection "
                             f"parameter{did_you_mean(key, KNOBS)}",
                             "DATABASE_URL query parameters and OPTIONS take the pool "
                             "parameters " + ", ".join(sorted(KNOBS)) + ", and libpq's "
                             "connection parameters (sslmode, connect_timeout, ...).",
                             E_UNKNOWN_KEY)
            continue
        if engine is not None and engine != POOLED_ENGINE:
            problems.add(path, f"is a pool parameter, but this alias uses ENGINE {engine!r}, "
                         "whose driver refuses it at connect",
                         f'Set ENGINE to "{POOLED_ENGINE}", or move it to '
                         f'POOLKIT["DATABASES"]["{alias}"] (it then sizes get_engine('
                         f'"{alias}") only).', E_CONFLICT)
            continue
        try:
            values[key] = knob.parse(value, from_text=True)
        except Invalid as error:
            problems.add(f'DATABASES["{alias}"]["OPTIONS"]["{key}"]',
                         f"must be {knob.accepted}, {error}", _text_hint(knob), E_BAD_VALUE)
    return values


_URL_SCHEMES = ("postgres", "postgresql", "pgsql", "postgis")


def blank_url_knobs(alias: str, database: Mapping[str, Any], environ_: Mapping[str, str],
                    problems: Collector) -> None:
    """An empty knob in the query of a database URL variable (``?pool_size=``) that points
    at this alias: django-environ drops blank parameters before ``OPTIONS``, where an empty
    ``POOLKIT_POOL_SIZE=`` is an error; reported the same way. The URL is matched to the
    alias by its database name, host and port; its text is never shown (it may hold a
    password)."""
    for variable, text in environ_.items():
        if "?" not in text or not text.startswith(tuple(f"{s}://" for s in _URL_SCHEMES)):
            continue
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            continue
        if (unquote(parts.path.lstrip("/")), parts.hostname or "", str(port or "")) != (
                str(database.get("NAME") or ""), str(database.get("HOST") or ""),
                str(database.get("PORT") or "")):
            continue
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in KNOBS and not value.strip():
                problems.add(f"environment variable {variable}: ?{key}=",
                             f'is empty (for DATABASES["{alias}"])',
                             f"Remove the parameter to keep the value configured elsewhere, or "
                             f"give one: {KNOBS[key].accepted}.", E_BAD_VALUE)


def _env_key(alias: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in alias).upper()


def read_environment(
    prefix: str | None,
    environ_: Mapping[str, str],
    databases: Iterable[str],
    engines: Iterable[str],
    problems: Collector,
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
                near = nearest(alias_key, aliases)
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
            near = nearest(knob_key, [key.upper() for key in accepted])
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
        except Invalid as error:
            problems.add(path, f"must be {KNOBS[name].accepted}, {error}",
                         _text_hint(KNOBS[name]), E_ENVIRONMENT)
            continue
        target = per_alias.setdefault(alias, {}) if alias else global_values
        target[name] = value
    return global_values, per_alias


