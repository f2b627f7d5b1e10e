"""A Redis connection the worker parent's loop drives without ever waiting.

The parent watches the socket in its one ``select``, next to the children's
pipes: commands are written as the socket takes them and replies are parsed
as they arrive (hiredis), so timeouts, memory limits and signals act on time
however slow Redis is. The link moves commands and replies in order and
knows nothing of jobs: the broker builds the commands and reads the replies.

Plain TCP and unix sockets connect without blocking; the AUTH and SELECT a
URL asks for go first in the pipeline. A TLS link (``rediss://``) lets
redis-py do the TLS handshake, which blocks for at most the connect
timeout, and is driven without blocking from then on.

A Sentinel URL (``redis+sentinel://``) makes every opening a two-hop one,
without blocking either: the link asks a sentinel where the master is
(taking the sentinels in turn, so a dead one is skipped on the next try),
then connects there and sends what was queued meanwhile. After a failover
the old master answers READONLY (it came back as a replica) or not at all;
either way the next opening asks again.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.connection import SSLConnection, parse_url

from sandboxq import addresses

#: Bytes read from the socket at a time.
READ_SIZE = 65536


class LinkError(redis.ConnectionError):
    """The connection failed or closed; what was sent may or may not have run.
    ``replies`` holds the complete replies that arrived before it did."""

    def __init__(self, message: str, replies: list[Any] | None = None) -> None:
        super().__init__(message)
        self.replies = replies or []


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a link connects, read from a Redis URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    username: str | None = None
    password: str | None = None
    db: int = 0
    #: redis-py SSLConnection options for rediss:// (None: no TLS).
    tls: dict[str, Any] | None = None
    connect_timeout: float = 5.0
    #: Sentinel: where to ask for the master named ``service`` (then
    #: host/port are unused), and the sentinels' own credentials.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    #: Redis Cluster: its seed nodes (cluster.py then routes each command).
    cluster_seeds: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_url(cls, url: str, connect_timeout: float) -> Endpoint:
        address = addresses.parse(url)
        if address.kind == "cluster":
            return cls(
                username=address.username,
                password=address.password,
                tls=dict(address.tls_options) if address.tls else None,
                connect_timeout=connect_timeout,
                cluster_seeds=address.nodes,
            )
        if address.kind == "sentinel":
            return cls(
                username=address.username,
                password=address.password,
                db=address.db,
                tls=dict(address.tls_options) if address.tls else None,
                connect_timeout=connect_timeout,
                sentinels=address.nodes,
                service=address.service or "",
                sentinel_username=address.sentinel_username,
                sentinel_password=address.sentinel_password,
            )
        try:
            options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {addresses.redact(url)!r}: {exc}") from None
        connection_class = options.pop("connection_class", None)
        common = {
            "username": options.pop("username", None),
            "password": options.pop("password", None),
            "db": int(options.pop("db", 0) or 0),
            "connect_timeout": connect_timeout,
        }
        if "path" in options:
            return cls(path=options.pop("path"), **common)
        host, port = options.pop("host", "localhost"), int(options.pop("port", 6379))
        tls = options if connection_class is SSLConnection else None
        return cls(host=host, port=port, tls=tls, **common)


def _reply_error(message: str) -> Exception:
    """An error reply as the redis-py exception it maps to (NoScriptError,
    ReadOnlyError...), so callers can tell them apart the same way."""
    error: Exception = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


class RedisLink:
    """One non-blocking RESP2 connection. ``send`` queues commands,
    ``on_writable`` and ``on_readable`` do the I/O when ``select`` says the
    socket is ready; ``read`` returns the replies that are complete, in
    order. Any failure raises LinkError and closes the link."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        #: Called with the socket's descriptor just before it is closed, so a
        #: selector watching it can let go before the number is reused.
        self.on_close: Callable[[int], None] | None = None
        self.sock: socket.socket | None = None
        self._keep: Any = None  # a redis-py connection whose socket we drive (TLS)
        self._out = bytearray()
        self._reader: Any = None
        self._handshake = 0  # replies of AUTH/SELECT still to check
        self._connecting = False
        #: Sentinel: the sentinel asked where the master is (None once the
        #: link is on the master), the commands held until then, the turn
        #: of the next sentinel to ask, and whether the master turned out to
        #: be a replica (READONLY): the next send opens again.
        self._asking: tuple[str, int] | None = None
        self._held = bytearray()
        self._sentinel_turn = 0
        self._stale = False
        #: Where the socket connects, for messages.
        self._peer = ""

    # -- state ------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def wants_write(self) -> bool:
        return self._connecting or bool(self._out)

    def sockets(self) -> list[tuple[int, bool]]:
        """The descriptors to watch, each with whether it waits to write
        (one here; a cluster link has one per node)."""
        return [(self.sock.fileno(), self.wants_write())] if self.sock is not None else []

    # -- opening and closing ---------------------------------------------------
    def open(self) -> None:
        """Start connecting; commands can be sent at once (they wait in the
        buffer until the connection is up)."""
        self.close()
        end = self.endpoint
        if end.sentinels:
            host, port = end.sentinels[self._sentinel_turn % len(end.sentinels)]
            self._sentinel_turn += 1
            self._connect(host, port, None, end.sentinel_username, end.sentinel_password, 0)
            self._queue(("SENTINEL", "GET-MASTER-ADDR-BY-NAME", end.service))
            self._asking = (host, port)
            self._peer = f"sentinel {host}:{port}"
        else:
            self._connect(end.host, end.port, end.path, end.username, end.password, end.db)

    def _connect(
        self,
        host: str,
        port: int,
        path: str | None,
        username: str | None,
        password: str | None,
        db: int,
    ) -> None:
        """Open the socket, and queue the AUTH and SELECT it needs."""
        self._reader = hiredis.Reader(replyError=_reply_error, protocolError=LinkError)
        self._peer = path or f"{host}:{port}"
        try:
            if self.endpoint.tls is not None:
                self._open_tls(host, port, username, password, db)
            else:
                self._open_plain(host, port, path)
        except OSError as exc:
            self.close()
            raise LinkError(
                f"cannot connect to Redis at {path or f'{host}:{port}'}: {exc}"
            ) from exc
        if self.endpoint.tls is None:  # redis-py's connect already did these for TLS
            if password is not None:
                self._queue(("AUTH", *((username, password) if username else (password,))))
                self._handshake += 1
            if db:
                self._queue(("SELECT", db))
                self._handshake += 1

    def _open_plain(self, host: str, port: int, path: str | None) -> None:
        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = path
        else:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = info[4]
        sock.setblocking(False)
        self.sock = sock
        code = sock.connect_ex(address)
        if code in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            self._connecting = True
        elif code != 0:
            raise OSError(code, errno.errorcode.get(code, str(code)))

    def _open_tls(
        self, host: str, port: int, username: str | None, password: str | None, db: int
    ) -> None:
        end = self.endpoint
        conn = SSLConnection(
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            socket_connect_timeout=end.connect_timeout,
            socket_timeout=end.connect_timeout,
            protocol=2,  # the replies the broker reads are RESP2's (no maps)
            **(end.tls or {}),
        )
        try:
            conn.connect()  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            raise OSError(str(exc)) from exc
        assert conn._sock is not None
        self._keep = conn
        self.sock = conn._sock
        self.sock.setblocking(False)

    def close(self) -> None:
        if self.sock is not None:
            if self.on_close is not None:
                self.on_close(self.sock.fileno())
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self._keep = None
        self._out.clear()
        self._handshake = 0
        self._connecting = False
        self._asking = None
        self._held.clear()
        self._stale = False

    # -- commands and replies -----------------------------------------------------
    def send(self, commands: list[tuple[Any, ...]]) -> None:
        """Queue commands and write what the socket takes now."""
        if self._stale:
            self.open()  # the master it knew is a replica now: ask again
        for command in commands:
            if self._asking is not None:
                self._held += hiredis.pack_command(command)
            else:
                self._queue(command)
        self.on_writable()

    def _queue(self, command: tuple[Any, ...]) -> None:
        self._out += hiredis.pack_command(command)

    def on_writable(self, fd: int | None = None) -> None:
        """Finish connecting, then write as much as the socket takes.
        (``fd``: which of :meth:`sockets` is ready; this link has one.)"""
        if self.sock is None:
            raise LinkError("not connected")
        if self._connecting:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == errno.EINPROGRESS:
                return
            if code != 0:
                self._fail(
                    f"cannot connect to Redis at {self._peer}: {errno.errorcode.get(code, code)}"
                )
            self._connecting = False
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # includes ssl.SSLWantWriteError's parent
                if _would_block(exc):
                    return
                self._fail(f"lost the connection to Redis: {exc}")
            del self._out[:sent]

    def read(self, fd: int | None = None) -> list[Any]:
        """The replies complete so far (an error reply is an exception
        object in the list). Raises LinkError if the connection closed."""
        if self.sock is None:
            raise LinkError("not connected")
        if self._connecting:
            return []
        while True:
            try:
                data = self.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if _would_block(exc):
                    break
                self._fail(f"lost the connection to Redis: {exc}")
            if not data:
                self._fail("Redis closed the connection")
            self._reader.feed(data)
            if self._asking is not None:
                self._go_to_master()
                return []
            # A short read emptied the socket; TLS may still hold decrypted
            # bytes select does not see, so read it until it would block.
            if len(data) < READ_SIZE and self._keep is None:
                break
        return self._complete_replies()

    def _complete_replies(self) -> list[Any]:
        replies = []
        while self._reader is not None and (reply := self._reader.gets()) is not False:
            if self._handshake:
                self._handshake -= 1
                if isinstance(reply, Exception):  # what follows could not have run
                    self.close()
                    raise LinkError(f"Redis refused the connection's setup: {reply}")
                continue
            if self.endpoint.sentinels and isinstance(reply, redis.exceptions.ReadOnlyError):
                self._stale = True
            replies.append(reply)
        return replies

    def _go_to_master(self) -> None:
        """The sentinel answered (or part of it arrived): connect to the
        master it named and send it what was held meanwhile."""
        replies = self._complete_replies()  # its AUTH is checked as any link's
        if not replies:
            return
        sentinel, held = self._asking, bytes(self._held)
        answer = replies[0]
        if isinstance(answer, Exception) or not answer:
            self.close()
            raise LinkError(
                f"sentinel {sentinel} knows no master named {self.endpoint.service!r}: {answer}"
            )
        host, port = answer[0].decode(), int(answer[1])
        self.close()
        end = self.endpoint
        self._connect(host, port, None, end.username, end.password, end.db)
        self._out += held

    def _fail(self, message: str) -> Any:
        """Close, and raise with the replies that were complete by then (the
        server ran those commands: their replies must not be thrown away)."""
        replies = self._complete_replies()
        self.close()
        raise LinkError(message, replies)


def _would_block(exc: OSError) -> bool:
    """A TLS socket says "try again" with SSLWantRead/WriteError."""
    return type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")
