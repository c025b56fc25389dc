"""The cost of one request in-process: the WSGI application called directly, one thread.

``python -m bench.inproc CONFIG [--budget S] [--repeats N]`` prints one JSON document: per
view, ``repeats`` means of one request in microseconds, each over ``budget`` seconds of
back-to-back requests. The configuration's real code runs against the real database (the
same settings as its gunicorn server, ``bench.settings``, or the plain app for F), but
without HTTP, ``wrk`` or other threads competing for the two cores, so the Python-side cost
of each configuration's connection handling shows with little noise. The harness runs one
process per configuration per round, alternating, and divides by the same round's B.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

PATHS = {"pk": "/pk/", "three": "/three/"}


def _application(config: str) -> Callable[..., Iterable[bytes]]:
    os.environ["BENCH_CONFIG"] = config
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    if config == "F":
        from bench.plain_wsgi import application as plain

        return plain
    from bench.wsgi import application

    return application  # type: ignore[return-value]


def _environ(path: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}


def _request(application: Callable[..., Iterable[bytes]], path: str) -> None:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    response = application(_environ(path), start_response)
    for _ in response:
        pass
    close = getattr(response, "close", None)
    if close is not None:
        close()  # Django's request_finished: the connection goes back / is closed here
    if not statuses or not statuses[0].startswith("200"):
        raise RuntimeError(f"{path} answered {statuses}")


def measure(config: str, budget_s: float, repeats: int) -> dict[str, list[float]]:
    """Per view, ``repeats`` means (microseconds per request) over ``budget_s`` each."""
    application = _application(config)
    found: dict[str, list[float]] = {}
    for view, path in PATHS.items():
        deadline = time.perf_counter() + budget_s / 2  # warm-up
        while time.perf_counter() < deadline:
            _request(application, path)
        means = []
        for _ in range(repeats):
            count = 0
            started = time.perf_counter_ns()
            deadline = time.perf_counter() + budget_s
            while time.perf_counter() < deadline:
                _request(application, path)
                count += 1
            means.append((time.perf_counter_ns() - started) / count / 1000.0)
        found[view] = means
    return found


def main(argv: list[str] | None = None) -> int:
    """The command line (the harness's; runnable by hand too)."""
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    parser.add_argument("config", choices=list("ABHCDEF"))
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    json.dump(measure(args.config, args.budget, args.repeats), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
