"""A real ``sandboxq dashboard`` subprocess (uvicorn) on a free loopback port,
for the tests where the server's own flags matter (the default Host
allow-list comes from the bound address), and raw HTTP requests to it with
any ``Host`` header, as a page of another site would send them."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from tests.asgi_client import Reply
from tests.faults import free_port
from tests.worker_harness import ROOT


@dataclass
class DashboardServer:
    redis_url: str
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None

    def __enter__(self) -> DashboardServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandboxq", "dashboard", "--port", str(self.port), *self.args],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "SANDBOXQ_REDIS_URL": self.redis_url, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not self._listening():
            if self.process.poll() is not None:
                raise AssertionError(f"the dashboard exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the dashboard did not start listening"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def request(
        self,
        method: str,
        path: str,
        *,
        host: str | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request; ``host`` is sent as the Host header, port included
        as a browser would (default ``127.0.0.1:PORT``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True)
            conn.putheader("Host", host if host is not None else f"127.0.0.1:{self.port}")
            body = urlencode(form).encode() if form is not None else b""
            if form is not None:
                conn.putheader("Content-Type", "application/x-www-form-urlencoded")
            conn.putheader("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            return Reply(
                response.status,
                [(k.lower(), v) for k, v in response.getheaders()],
                response.read(),
            )
        finally:
            conn.close()
