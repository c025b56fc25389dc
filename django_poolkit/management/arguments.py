"""Argument types of poolkit's commands: strict numbers with a stated range.

``float("nan")``, ``float("inf")``, ``int("1_000")`` and int() of Arabic-Indic digits all succeed;
a command given such a value used to end in a traceback (``time.sleep(nan)``) or, worse, run
(``--watch 1e-300`` opened a server connection per loop without pause). Every numeric argument
goes through :func:`bounded` instead, whose refusal argparse turns into a usage error: exit
status 2 and a message naming the argument, the value and the accepted range.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from django.core.management.base import CommandError, CommandParser

from .._schema import SHORTEST_WAIT, Rule, bounds_of

__all__ = ["TIMEOUT_RANGE", "UsageExit2", "bounded", "field_argument", "timeout_seconds"]

#: ``--timeout`` of every command, in seconds: the settings' 1 ms floor (below it every probe
#: and server read times out before it starts) up to 30.
TIMEOUT_RANGE = (SHORTEST_WAIT, 30.0)

_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _shown(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def bounded(
    minimum: float, maximum: float, *, integer: bool = False, above: bool = False,
    unit: str = "",
) -> Callable[[str], float]:
    """An argparse ``type``: ASCII digits only, finite, and ``minimum <= value <= maximum``
    (``minimum < value`` with ``above``). Integers when ``integer``."""
    kind = "an integer" if integer else "a number"
    low = f"> {_shown(minimum)}" if above else f">= {_shown(minimum)}"
    accepted = f"{kind}{' of ' + unit if unit else ''} {low} and <= {_shown(maximum)}"

    def parse(text: str) -> float:
        pattern = _INTEGER if integer else _DECIMAL
        cleaned = text.strip()
        if not pattern.fullmatch(cleaned):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        value: float = int(cleaned) if integer else float(cleaned)
        if not math.isfinite(value) or value > maximum or value < minimum or (
                above and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        return value

    parse.__name__ = accepted  # argparse names the type when a value is refused otherwise
    return parse


class UsageExit2:
    """Mixin for a ``BaseCommand``: a usage error is exit status 2 from ``call_command`` too.

    From the command line argparse already exits 2; through ``call_command`` Django raises a
    ``CommandError`` whose ``returncode`` is 1, which scripts cannot tell from a failure.
    """

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser: CommandParser = super().create_parser(  # type: ignore[misc]
            prog_name, subcommand, **kwargs)
        original = parser.error

        def error(message: str) -> NoReturn:
            if parser.called_from_command_line:
                original(message)
            raise CommandError(f"Error: {message}", returncode=2)

        parser.error = error  # type: ignore[method-assign]
        return parser


def field_argument(rule: Rule, *, integer: bool = False, unit: str = "") -> Callable[[str], float]:
    """The argparse type of an option that overrides a setting: the bounds of the setting's
    own rule in the schema, so a command and ``POOLKIT`` accept the same range."""
    found = bounds_of(rule)
    if found is None:
        raise TypeError("field_argument needs a number rule with bounds")
    low, high = found
    return bounded(low, high, integer=integer, unit=unit)


def timeout_seconds() -> Callable[[str], float]:
    """The argparse type of a command's ``--timeout`` (:data:`TIMEOUT_RANGE`)."""
    return bounded(*TIMEOUT_RANGE, unit="seconds")
