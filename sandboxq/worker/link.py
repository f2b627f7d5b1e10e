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

    @classmethod
    def from_url(cls, url: str, connect_timeout: float) -> Endpoint:
        try:
            options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
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

    # -- state ------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def wants_write(self) -> bool:
        return self._connecting or bool(self._out)

    # -- opening and closing ---------------------------------------------------
    def open(self) -> None:
        """Start connecting; commands can be sent at once (they wait in the
        buffer until the connection is up)."""
        self.close()
        self._reader = hiredis.Reader(replyError=_reply_error, protocolError=LinkError)
        end = self.endpoint
        try:
            if end.tls is not None:
                self._open_tls()
            else:
                self._open_plain()
        except OSError as exc:
            self.close()
            raise LinkError(f"cannot connect to Redis: {exc}") from exc
        if end.tls is None:  # redis-py's connect already did these for TLS
            if end.password is not None:
                auth = (end.username, end.password) if end.username else (end.password,)
                self._queue(("AUTH", *auth))
                self._handshake += 1
            if end.db:
                self._queue(("SELECT", end.db))
                self._handshake += 1

    def _open_plain(self) -> None:
        end = self.endpoint
        if end.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = end.path
        else:
            info = socket.getaddrinfo(end.host, end.port, type=socket.SOCK_STREAM)[0]
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

    def _open_tls(self) -> None:
        end = self.endpoint
        conn = SSLConnection(
            host=end.host,
            port=end.port,
            db=end.db,
            username=end.username,
            password=end.password,
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

    # -- commands and replies -----------------------------------------------------
    def send(self, commands: list[tuple[Any, ...]]) -> None:
        """Queue commands and write what the socket takes now."""
        for command in commands:
            self._queue(command)
        self.on_writable()

    def _queue(self, command: tuple[Any, ...]) -> None:
        self._out += hiredis.pack_command(command)

    def on_writable(self) -> None:
        """Finish connecting, then write as much as the socket takes."""
        if self.sock is None:
            raise LinkError("not connected")
        if self._connecting:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == errno.EINPROGRESS:
                return
            if code != 0:
                self._fail(f"cannot connect to Redis: {errno.errorcode.get(code, code)}")
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

    def read(self) -> list[Any]:
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
            replies.append(reply)
        return replies

    def _fail(self, message: str) -> Any:
        """Close, and raise with the replies that were complete by then (the
        server ran those commands: their replies must not be thrown away)."""
        replies = self._complete_replies()
        self.close()
        raise LinkError(message, replies)


def _would_block(exc: OSError) -> bool:
    """A TLS socket says "try again" with SSLWantRead/WriteError."""
    return type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError")
