"""A tiny in-process ASGI test client: one request, one asyncio.run."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import orjson


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return orjson.loads(self.body)


#: A form's fields: a mapping, or (name, value) pairs to repeat a name.
Form = Mapping[str, str] | Sequence[tuple[str, str]]


def loopback_address() -> str:
    """A random 127.x.y.z, so that each client is a client of its own for
    the dashboard's login throttling (kept in the Redis all tests share)."""
    return "127." + ".".join(str(random.randrange(1, 255)) for _ in range(3))


@dataclass
class Client:
    app: Any
    root_path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"
    address: str = field(default_factory=loopback_address)

    def bearer(self, token: str) -> Client:
        return self.with_auth(f"Bearer {token}")

    def basic(self, user: str, password: str) -> Client:
        return self.with_auth("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())

    def with_auth(self, authorization: str) -> Client:
        """A client that sends this Authorization header (no cookies)."""
        headers = {**self.headers, "authorization": authorization}
        return Client(self.app, self.root_path, headers, {}, self.scheme, self.address)

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, form: Form | None = None, **headers: str) -> Reply:
        return self.request("POST", path, form=form, headers=headers)

    def request(
        self,
        method: str,
        path: str,
        *,
        form: Form | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        path, _, query = path.partition("?")
        body = urlencode(form).encode() if form is not None else b""
        all_headers = {"host": "testserver", **self.headers, **(headers or {})}
        all_headers = {k.replace("_", "-").lower(): v for k, v in all_headers.items()}
        if form is not None:
            all_headers["content-type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            all_headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": self.scheme,
            "path": self.root_path + path,
            "raw_path": (self.root_path + path).encode(),
            "root_path": self.root_path,
            "query_string": query.encode(),
            "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
            "server": ("testserver", 80),
            "client": (self.address, 12345),
        }
        reply = asyncio.run(self._run(scope, body))
        for value in reply.all("set-cookie"):
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return reply

    async def _run(self, scope: dict[str, Any], body: bytes) -> Reply:
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                await asyncio.sleep(3600)
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        headers = [(k.decode().lower(), v.decode()) for k, v in start["headers"]]
        content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Reply(start["status"], headers, content)
