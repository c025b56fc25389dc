"""Counting what a client sends PostgreSQL: a statement-counting TCP proxy.

``pg_stat_statements`` needs ``shared_preload_libraries`` (a server restart), and
``pg_stat_database`` sees transactions, not statements, and reports them up to ten seconds
late. So the work phase puts this proxy between the bench server and PostgreSQL and reads
the frontend protocol: every simple ``Query`` and every extended-protocol ``Execute`` is one
statement, classified by its first keyword (a ``SELECT 1`` or an empty query is a ping). It
refuses SSL and GSS encryption (answers ``N``, as a server without them would), so the client
falls back to plain TCP, which it does with libpq's default ``sslmode=prefer``.

The parser is pure (bytes in, statements out) so the tests check it on hand-made messages.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections import Counter

__all__ = ["FrontendParser", "StatementCounter", "classify"]

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


def classify(query: str) -> str:
    """A statement's kind: ``ping`` for an empty query or ``SELECT 1``, ``SET`` for ``SET``
    and ``SELECT set_config(...)``, else its first keyword in upper case (``SELECT``,
    ``ROLLBACK``, ``DISCARD``...)."""
    text = query.strip().rstrip(";").strip()
    if not text or re.fullmatch(r"(?i)select\s+1", text):
        return "ping"
    if re.match(r"(?i)select\s+set_config\s*\(", text):
        return "SET"  # Django's time zone set-up on a new connection
    return text.split(None, 1)[0].upper()


class FrontendParser:
    """Reads the client-to-server byte stream of one connection.

    ``feed()`` returns the statements completed by the new bytes (their query texts) and,
    for the startup phase, the reply the proxy must send itself (``b"N"`` to an SSL or GSS
    encryption request, which is then not forwarded).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._started = False
        self._statements: dict[bytes, str] = {}  # prepared statement name -> query
        self._portals: dict[bytes, str] = {}  # portal name -> query
        self.connections = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes, list[str]]:
        """Consume ``data``; returns (bytes to forward, reply to the client, statements)."""
        self._buffer.extend(data)
        forward = bytearray()
        reply = bytearray()
        statements: list[str] = []
        while True:
            if not self._started:
                if len(self._buffer) < 8:
                    break
                length, code = struct.unpack("!ii", self._buffer[:8])
                if len(self._buffer) < length:
                    break
                message = bytes(self._buffer[:length])
                del self._buffer[:length]
                if code in (_SSL_REQUEST, _GSS_REQUEST):
                    reply.extend(b"N")
                    continue
                forward.extend(message)
                if code != _CANCEL_REQUEST:
                    self._started = True
                    self.connections += 1
                continue
            if len(self._buffer) < 5:
                break
            kind = bytes(self._buffer[0:1])
            (length,) = struct.unpack("!i", self._buffer[1:5])
            if len(self._buffer) < 1 + length:
                break
            body = bytes(self._buffer[5:1 + length])
            forward.extend(self._buffer[:1 + length])
            del self._buffer[:1 + length]
            statement = self._message(kind, body)
            if statement is not None:
                statements.append(statement)
        return bytes(forward), bytes(reply), statements

    def _message(self, kind: bytes, body: bytes) -> str | None:
        if kind == b"Q":
            return body.rstrip(b"\0").decode(errors="replace")
        if kind == b"P":  # Parse: name, query, parameter types
            name, rest = body.split(b"\0", 1)
            self._statements[name] = rest.split(b"\0", 1)[0].decode(errors="replace")
        elif kind == b"B":  # Bind: portal, statement, ...
            portal, rest = body.split(b"\0", 1)
            statement = rest.split(b"\0", 1)[0]
            self._portals[portal] = self._statements.get(statement, "?")
        elif kind == b"E":  # Execute: portal, max rows
            portal = body.split(b"\0", 1)[0]
            return self._portals.get(portal, "?")
        elif kind == b"C" and body[:1] == b"S":  # Close statement
            self._statements.pop(body[1:].rstrip(b"\0"), None)
        return None


class StatementCounter:
    """A TCP proxy on 127.0.0.1 to ``upstream`` that counts statements by kind.

    ``reset()`` starts a new count (after a warm-up); ``counts()`` reads it. ``close()``
    stops listening and closes every relayed connection.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._new_counts: Counter[str] = Counter()
        self._texts: Counter[str] = Counter()
        self._connections = 0
        self._generation = 0
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="bench-wire-accept", daemon=True).start()

    def reset(self) -> None:
        """Forget everything counted so far; connections open now count as old ones."""
        with self._lock:
            self._counts.clear()
            self._new_counts.clear()
            self._texts.clear()
            self._connections = 0
            self._generation += 1

    def counts(self) -> tuple[dict[str, int], int]:
        """Statements by kind and connections opened since the last :meth:`reset`."""
        with self._lock:
            return dict(self._counts), self._connections

    def new_connection_counts(self) -> dict[str, int]:
        """Of :meth:`counts`, the statements sent on connections opened since the last
        :meth:`reset` (connection set-up shows here, a hot connection's work does not)."""
        with self._lock:
            return dict(self._new_counts)

    def texts(self, top: int = 10) -> list[tuple[str, int]]:
        """The most frequent statement texts since the last :meth:`reset` (first 100
        characters), to say what each kind is."""
        with self._lock:
            return self._texts.most_common(top)

    def close(self) -> None:
        """Stop the proxy and close every socket it holds."""
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        """Relay one connection until either side closes, then close both sockets."""
        down = threading.Thread(target=self._downstream, args=(server, client), daemon=True)
        down.start()
        parser = FrontendParser()
        with self._lock:
            born = self._generation
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                forward, reply, statements = parser.feed(data)
                if reply:
                    client.sendall(reply)
                if forward:
                    server.sendall(forward)
                if statements or parser.connections:
                    with self._lock:
                        kinds = [classify(s) for s in statements]
                        self._counts.update(kinds)
                        if born == self._generation:  # opened since the last reset
                            self._new_counts.update(kinds)
                        self._texts.update(" ".join(s.split())[:100] for s in statements)
                        self._connections += parser.connections
                    parser.connections = 0
        except OSError:
            pass
        finally:
            _shutdown(client, server)
            down.join(timeout=5)
            with self._lock:
                for sock in (client, server):
                    sock.close()
                    if sock in self._sockets:
                        self._sockets.remove(sock)

    def _downstream(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(client, server)


def _shutdown(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
