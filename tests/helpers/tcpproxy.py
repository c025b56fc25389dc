"""A small TCP proxy for fault tests: forward, reset, hang on connect, or freeze streams.

Put it between a client and PostgreSQL (point the alias's HOST/PORT at ``proxy.port``) and
switch its behaviour while the client runs:

- ``mode = "forward"``: pass bytes both ways (the default);
- ``mode = "reset"``: accept new connections and reset them at once (RST), like a server
  that dies as it accepts;
- ``mode = "hang"``: accept new connections and never answer (a blackholed or stopped server:
  the TCP handshake completes, the startup reply never comes);
- ``freeze()`` / ``thaw()``: stop and resume the flow on every stream, open or new, so a
  query in flight waits forever (a paused backend).

For "refused" (nothing listening) use :func:`free_port`. Every socket is closed by
:meth:`TcpProxy.close` (the tests turn ResourceWarning into errors).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Mode = Literal["forward", "reset", "hang"]

_POLL_S = 0.05


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TcpProxy:
    """Listens on 127.0.0.1:``port`` and relays to ``upstream`` according to ``mode``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, mode: Mode = "forward"):
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = mode
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop, "tcpproxy-accept")

    def __repr__(self) -> str:
        return f"<TcpProxy :{self.port} -> {self.upstream[0]}:{self.upstream[1]} {self.mode}>"

    def freeze(self) -> None:
        """Hold every byte in both directions until :meth:`thaw`."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Let held and new bytes flow again."""
        self._flowing.set()

    def close(self) -> None:
        """Stop listening, close every connection and wait for the relay threads."""
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed.is_set():
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                # Linger 0: close() sends RST instead of FIN.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            if not self._keep(client):
                return
            if self.mode == "hang":
                continue  # held open, never answered, closed by close()
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            if not self._keep(upstream):
                return
            self._start(self._pump, "tcpproxy-up", client, upstream)
            self._start(self._pump, "tcpproxy-down", upstream, client)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        source.settimeout(_POLL_S)
        while not self._closed.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            while not self._flowing.wait(_POLL_S):
                if self._closed.is_set():
                    return
            try:
                target.sendall(data)
            except OSError:
                break
        # One side ended: end the other so the peer sees EOF too.
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def proxy_to(host: str, port: int, *, mode: Mode = "forward") -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` closed on exit."""
    proxy = TcpProxy(host, port, mode=mode)
    try:
        yield proxy
    finally:
        proxy.close()
