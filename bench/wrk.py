"""Running ``wrk`` and reading its report.

wrk prints a human report; with ``--latency`` it includes the 50/75/90/99th percentiles. Only
that report is parsed (no Lua script), so any Debian ``wrk`` build works.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["WrkResult", "parse_duration_ms", "parse_wrk", "run_wrk"]

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; ``errors`` counts socket errors (connect, read,
    write, timeout) plus non-2xx/3xx responses, the two ways a request can fail."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int

    @property
    def errors(self) -> int:
        """Every failed request: socket errors and non-2xx/3xx answers."""
        return self.socket_errors + self.non_2xx

    def as_dict(self) -> dict[str, Any]:
        """The fields plus ``errors``, for the JSON results."""
        return {**asdict(self), "errors": self.errors}


def parse_duration_ms(text: str) -> float:
    """``"512.00us"``, ``"9.80ms"``, ``"1.02s"``, ``"1.50m"`` -> milliseconds."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _percentile(output: str, label: str) -> float:
    match = re.search(rf"^\s*{label}%\s+(\S+)\s*$", output, re.MULTILINE)
    if match is None:
        raise ValueError(f"wrk output has no {label}% latency (was --latency given?)")
    return parse_duration_ms(match.group(1))


def parse_wrk(output: str) -> WrkResult:
    """Parse wrk's report (``wrk --latency``). Raises ValueError when a figure is missing,
    e.g. when wrk could not connect at all."""
    summary = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", output, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", output, re.MULTILINE)
    if summary is None or rps is None:
        raise ValueError("wrk output has no request summary:\n" + output.strip()[-500:])
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    return WrkResult(
        requests=int(summary.group(1)),
        duration_s=parse_duration_ms(summary.group(2) + summary.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=_percentile(output, "50"),
        p75_ms=_percentile(output, "75"),
        p90_ms=_percentile(output, "90"),
        p99_ms=_percentile(output, "99"),
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(url: str, connections: int, duration_s: float, *, timeout_s: float = 5.0) -> WrkResult:
    """Drive ``url`` for ``duration_s`` seconds with ``connections`` keep-alive connections
    (wrk threads: at most 2, the machine's client share)."""
    threads = max(1, min(2, connections))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
               "--latency", f"--timeout={timeout_s:g}s", url]
    done = subprocess.run(command, capture_output=True, text=True, check=False,  # noqa: S603
                          timeout=duration_s + timeout_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return parse_wrk(done.stdout)
