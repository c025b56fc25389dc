"""Starting and stopping one gunicorn server per configuration, and an exact-count client.

Every configuration is served the same way: gunicorn's ``gthread`` worker, 2 workers x 8
threads, ``--reuse-port`` (the kernel spreads connections over the workers evenly), on a free
port of 127.0.0.1. A new server per configuration per round, so no configuration inherits
another's warm connections.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["BenchServer", "ServerFailed", "exact_requests", "free_port"]

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
THREADS = 8

#: Configuration letter -> WSGI application.
APPS = {letter: "bench.wsgi:application" for letter in "ABHCDE"}
APPS["F"] = "bench.plain_wsgi:application"


class ServerFailed(RuntimeError):
    """The server did not come up (or did not answer 200); the message carries the reason
    from its error log."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class BenchServer:
    """One gunicorn server for ``config`` (context manager: started on entry, stopped and
    its connections gone on exit)."""

    def __init__(self, config: str, database_url: str, pool_size: int, log_dir: Path) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"server-{config}-{self.port}.log"
        env = {**os.environ, "BENCH_CONFIG": config, "BENCH_DATABASE_URL": database_url,
               "BENCH_POOL_SIZE": str(pool_size), "DJANGO_SETTINGS_MODULE": "bench.settings",
               "PYTHONPATH": str(ROOT)}
        self._command = [
            str(Path(sys.executable).with_name("gunicorn")), "-k", "gthread",
            "-w", str(WORKERS), "--threads", str(THREADS), "--reuse-port",
            "-b", f"127.0.0.1:{self.port}", "--log-level", "warning",
            "--error-logfile", "-", "--chdir", str(ROOT), APPS[config]]
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None

    def tail(self, lines: int = 12) -> str:
        """The end of the server's error log (why it failed)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until ``/pk/`` and ``/three/`` answer 200."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603
                self._command, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerFailed(f"server {self.config} exited with {self._process.returncode}:"
                                   f"\n{self.tail()}")
            try:
                statuses = [_get(self.port, path)[0] for path in ("/pk/", "/three/")]
            except OSError as error:
                last = str(error)
                time.sleep(0.1)
                continue
            if statuses == [200, 200]:
                return
            self.stop()
            raise ServerFailed(f"server {self.config} answered {statuses}:\n{self.tail()}")
        self.stop()
        raise ServerFailed(f"server {self.config} did not answer in {timeout_s:g} s ({last}):"
                           f"\n{self.tail()}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM to the master, which stops its workers), then kill."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def __enter__(self) -> BenchServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def exact_requests(port: int, path: str, total: int, concurrency: int = 8) -> int:
    """Send exactly ``total`` GET requests over ``concurrency`` keep-alive connections and
    wait for every answer. Returns how many answered 200 (the caller checks it is all)."""
    ok = 0
    lock = threading.Lock()
    shares = [total // concurrency + (1 if i < total % concurrency else 0)
              for i in range(concurrency)]

    def client(count: int) -> None:
        nonlocal ok
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        good = 0
        try:
            for _ in range(count):
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                good += response.status == 200
        finally:
            connection.close()
        with lock:
            ok += good

    threads = [threading.Thread(target=client, args=(n,)) for n in shares if n]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ok
