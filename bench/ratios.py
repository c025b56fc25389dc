"""Paired ratios: each round's figure divided by the same round's baseline (configuration B).

Absolute figures on a shared 2-core machine drift 10-40% between runs; configurations that
run back to back in one round share the drift, so the ratio of the two is what we compare.
The summary of a series of per-round ratios is its median and its range (min, max), which
says how much to trust the median.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["RatioSummary", "paired_ratios", "ratio_text", "summarise"]


@dataclass(frozen=True)
class RatioSummary:
    """Median and range of per-round ratios; ``n`` rounds had both figures."""

    median: float
    low: float
    high: float
    n: int

    def render(self) -> str:
        """``0.97 (0.91-1.02)``; a single round has no range to show."""
        return ratio_text(vars(self))


def ratio_text(ratio: Mapping[str, float] | None, digits: int = 2, missing: str = "n/a") -> str:
    """A summary (``median``, ``low``, ``high``, ``n``, as stored in results.json) as
    ``0.97 (0.91-1.02)``; one round shows no range, none shows ``missing``."""
    if ratio is None:
        return missing
    if ratio["n"] == 1:
        return f"{ratio['median']:.{digits}f}"
    return f"{ratio['median']:.{digits}f} ({ratio['low']:.{digits}f}-{ratio['high']:.{digits}f})"


def paired_ratios(rounds: Sequence[Mapping[str, float | None]], config: str,
                  baseline: str = "B") -> list[float]:
    """``rounds[i][config] / rounds[i][baseline]`` for every round where both exist.

    A round where either figure is missing (the server failed) or the baseline is zero (no
    ratio can be formed) is left out, never counted as 0 or 1.
    """
    found = []
    for figures in rounds:
        value = figures.get(config)
        base = figures.get(baseline)
        if value is None or base is None or base == 0:
            continue
        found.append(value / base)
    return found


def summarise(ratios: Sequence[float]) -> RatioSummary | None:
    """Median and range of ``ratios``; None when there are none."""
    if not ratios:
        return None
    return RatioSummary(statistics.median(ratios), min(ratios), max(ratios), len(ratios))
