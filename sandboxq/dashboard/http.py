"""The little HTTP the dashboard needs over raw ASGI: requests, responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The largest request body read (forms are tiny).
MAX_BODY = 64 * 1024


class HTTPError(Exception):
    """A request refused with ``status`` and a message for the user."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


class BodyTooLarge(ValueError):
    pass


@dataclass
class Request:
    method: str
    segments: list[str]  # the path below root_path, split and percent-decoded
    query: dict[str, str]
    headers: dict[str, str]
    cookies: dict[str, str]
    root: str  # root_path: every link starts with it
    form: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"  # as the server saw it (a proxy's X-Forwarded-Proto aside)
    client: str = ""  # the peer's address, as the server saw it
    external_user: str | None = None  # who the host application says is asking
    #: Every value of a field given more than once (a form's repeated
    #: field, a JSON list), as ``form`` keeps only the last.
    form_lists: dict[str, list[str]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        """Every value of the form field ``name`` (none: [])."""
        if name in self.form_lists:
            return self.form_lists[name]
        return [self.form[name]] if name in self.form else []

    @property
    def wants_json(self) -> bool:
        return "application/json" in self.headers.get("accept", "") or (
            bool(self.segments) and self.segments[0] == "api"
        )

    @classmethod
    def from_scope(cls, scope: Scope, body: bytes) -> Request:
        root = str(scope.get("root_path", "")).rstrip("/")
        raw = scope.get("raw_path")
        path = raw.decode("latin-1").split("?", 1)[0] if raw else str(scope["path"])
        # Servers differ on whether path includes root_path; accept both.
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        elif root and path == root:
            path = "/"
        segments = [unquote(s) for s in path.split("/") if s]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cookies: dict[str, str] = {}
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(headers["cookie"])
            except Exception:  # a malformed cookie header: ignore it
                jar = SimpleCookie()
            cookies = {k: m.value for k, m in jar.items()}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        form: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        if "application/x-www-form-urlencoded" in headers.get("content-type", ""):
            pairs = parse_qsl(body.decode("utf-8", "replace"))
            form = dict(pairs)
            for k, v in pairs:
                lists.setdefault(k, []).append(v)
        elif body and "application/json" in headers.get("content-type", ""):
            try:
                loaded = orjson.loads(body)
            except orjson.JSONDecodeError:
                loaded = {}
            if isinstance(loaded, dict):
                form = {str(k): str(v) for k, v in loaded.items()}
                lists = {
                    str(k): [str(x) for x in v] for k, v in loaded.items() if isinstance(v, list)
                }
        client = scope.get("client")
        return cls(
            scope["method"],
            segments,
            query,
            headers,
            cookies,
            root,
            form,
            str(scope.get("scheme", "http")),
            str(client[0]) if client else "",
            form_lists=lists,
        )

    def forwarded(self, header: str, trusted: bool) -> str:
        """The last value of a proxy's ``X-Forwarded-*`` header: the one the
        proxy in front of us set or appended (what the client sent comes
        first). Empty unless the proxy is ``trusted``."""
        if not trusted:
            return ""
        return self.headers.get(header, "").rpartition(",")[2].strip()

    def is_secure(self, trust_proxy: bool) -> bool:
        """Served over HTTPS, or behind a trusted proxy that says so."""
        return self.scheme == "https" or self.forwarded("x-forwarded-proto", trust_proxy) == "https"

    def client_address(self, trust_proxy: bool) -> str:
        """Who is asking: the peer, or the address a trusted proxy saw."""
        return self.forwarded("x-forwarded-for", trust_proxy) or self.client


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        body = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)
        return cls(status, body, "application/json")

    @classmethod
    def html(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())

    @classmethod
    def redirect(cls, location: str) -> Response:
        return cls(303, b"", "text/plain", [("location", location)])

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
            (
                b"content-security-policy",
                b"default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def host_name(value: str) -> str:
    """The name part of a Host header or an allowed host, normalized:
    ``Example.COM.:8080`` → ``example.com``, ``[::1]:8080`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class AllowedHosts:
    """The names a request's ``Host`` may carry; ``*`` allows any. A page of
    another site that rebinds its DNS name to this server's address sends
    its own name as Host, so it gets a 400 before anything else happens."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(host_name(n) for n in names if n.strip())
        if not self.names:
            raise ValueError("allowed_hosts is empty: name at least one host (or '*')")

    def __contains__(self, header: object) -> bool:
        if "*" in self.names:
            return True
        return isinstance(header, str) and bool(header) and host_name(header) in self.names

    def refusal(self, scope: Scope) -> Response | None:
        """A 400 unless the request's Host is allowed."""
        found = [v for k, v in scope["headers"] if k.lower() == b"host"]
        host = found[0].decode("latin-1") if len(found) == 1 else ""
        if host in self:
            return None
        return Response(
            400, f"host {host[:100]!r} is not allowed here\n".encode(), "text/plain; charset=utf-8"
        )


async def read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge(f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
