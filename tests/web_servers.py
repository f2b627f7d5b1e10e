"""The examples' web servers (uvicorn, Django's runserver) as real
processes, and JSON over HTTP to them."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.faults import free_port


@contextmanager
def serving(
    command: Callable[[int], list[str]], *, cwd: Path, env: dict[str, str], ready: str
) -> Iterator[str]:
    """Run ``command(port)`` until the ``with`` ends; yields its base URL
    once a line of its output holds ``ready``."""
    port = free_port()
    server = subprocess.Popen(
        command(port),
        cwd=cwd,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    up = threading.Event()
    said: list[str] = []

    def watch() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            said.append(line)
            if ready in line:
                up.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert up.wait(30), f"{command(port)[:3]} did not say {ready!r}; it said:\n" + "".join(
            said[-30:]
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def call(
    url: str, body: bytes | None = None, form: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], Any]:
    """GET ``url``, or POST ``body`` or ``form``; the status, the headers and
    the JSON answer (of an error status too)."""
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())
