"""The dashboard's ASGI application: routing, authentication, actions.

Written against raw ASGI (no framework). Each request is handled in a worker
thread (``asyncio.to_thread``): the Redis client is synchronous.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import redis

from sandboxq.addresses import redact
from sandboxq.connection import connect, resolve_url
from sandboxq.dashboard import actions, templates
from sandboxq.dashboard.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    DEFAULT_SESSION_TTL,
    SESSION_COOKIE,
    Auth,
    Identity,
    Throttled,
    clean_user,
)
from sandboxq.dashboard.http import (
    AllowedHosts,
    BodyTooLarge,
    HTTPError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    read_body,
)
from sandboxq.dashboard.redact import Redactor
from sandboxq.dashboard.store import NotFound, Store
from sandboxq.dashboard.users import TokenHash, load_users
from sandboxq.errors import ConnectionFailed
from sandboxq.queue import JobIsActive

DEFAULT_REDACT = ("password", "token", "card", "secret")
TOKEN_ENV = "SANDBOXQ_DASHBOARD_TOKEN"
ASGIApp = Callable[[Scope, Receive, Send], Any]
#: ``authenticate``: given the ASGI scope, the name of the user the host
#: application logged in, or None; a plain function or a coroutine function.
Authenticate = Callable[[Scope], str | Awaitable[str | None] | None]

log = logging.getLogger("sandboxq.dashboard")


#: What ``respond`` answers with an error page rather than a crash.
HANDLED = (
    HTTPError,
    Throttled,
    NotFound,
    JobIsActive,
    ValueError,
    ConnectionFailed,
    redis.ConnectionError,
    redis.TimeoutError,
)


def app(
    url: str | None = None,
    *,
    token: str | None = None,
    read_only: bool = False,
    redact: Sequence[str] = DEFAULT_REDACT,
    queues: Sequence[str] | None = None,
    allowed_hosts: Sequence[str] | None = None,
    session_ttl: float = DEFAULT_SESSION_TTL,
    trust_proxy_headers: bool = False,
    users: str | os.PathLike[str] | Mapping[str, str] | None = None,
    authenticate: Authenticate | None = None,
) -> Dashboard:
    """The dashboard as an ASGI application.

    ``token`` (else ``$SANDBOXQ_DASHBOARD_TOKEN``) is required as a bearer
    token, a basic-auth password or through the login form; the name a user
    gives is audited as unverified. ``users`` instead (a file of
    ``name:hash`` lines, or a mapping of name to hash; see
    ``sandboxq dashboard hash-token``) gives each user a token of their own,
    and the audit their name. Mounted in an application that logs its users
    in, ``authenticate(scope)`` returns the user's name (audited as such) or
    None (a 401). With none of these the app requires no authentication
    (and logs a warning): anyone who reaches it can act. ``queues``
    limits it to those queues (default: every queue found on the Redis).
    ``allowed_hosts``: the names a request's ``Host`` may carry (port
    ignored; ``"*"``: any); any other gets a 400. None leaves the check to
    the application it is mounted in.

    A login session lasts ``session_ttl`` seconds (12 h) or until logout; it
    is kept in Redis. ``trust_proxy_headers``: believe ``X-Forwarded-Proto``
    (is it HTTPS? then the cookie is ``Secure``) and ``X-Forwarded-For``
    (the client's address), for a dashboard behind a proxy that sets them.
    """
    return Dashboard(
        url,
        token=token if token is not None or users is not None else os.environ.get(TOKEN_ENV),
        read_only=read_only,
        redact=redact,
        queues=queues,
        allowed_hosts=allowed_hosts,
        session_ttl=session_ttl,
        trust_proxy_headers=trust_proxy_headers,
        users=None if users is None else load_users(users),
        authenticate=authenticate,
    )


class Dashboard:
    def __init__(
        self,
        url: str | None,
        *,
        token: str | None,
        read_only: bool,
        redact: Sequence[str],
        queues: Sequence[str] | None,
        allowed_hosts: Sequence[str] | None = None,
        session_ttl: float = DEFAULT_SESSION_TTL,
        trust_proxy_headers: bool = False,
        users: Mapping[str, TokenHash] | None = None,
        authenticate: Authenticate | None = None,
    ) -> None:
        self.hosts = None if allowed_hosts is None else AllowedHosts(allowed_hosts)
        self.url = resolve_url(url)
        self.client = connect(self.url)
        self.auth = Auth(token, self.client, session_ttl, users, external=authenticate is not None)
        self.authenticate = authenticate
        if not self.auth.required:
            log.warning(
                "the sandboxq dashboard requires no authentication: anyone who reaches it "
                "can retry, remove, cancel and clean jobs. Give it a token, users or "
                "authenticate=, or make sure it is served only behind a login."
            )
        self.trust_proxy = trust_proxy_headers
        self.read_only = read_only
        self.store = Store(self.client, Redactor(redact), queues)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        refused = None if self.hosts is None else self.hosts.refusal(scope)
        if refused is not None:
            await refused.send(send)
            return
        try:
            body = await read_body(receive)
        except BodyTooLarge as exc:
            await Response.html(str(exc), 413).send(send)
            return
        request = Request.from_scope(scope, body)
        if self.authenticate is not None:
            request.external_user = await self._authenticate(self.authenticate, scope)
        response = await asyncio.to_thread(self.respond, request)
        await response.send(send)

    @staticmethod
    async def _authenticate(authenticate: Authenticate, scope: Scope) -> str | None:
        """The host application's user, called in a thread unless it is a
        coroutine function (it may read a database)."""
        if inspect.iscoroutinefunction(authenticate):
            found = await authenticate(scope)
        else:
            found = await asyncio.to_thread(authenticate, scope)
            if inspect.isawaitable(found):
                found = await found
        return None if found is None else clean_user(str(found)) or None

    # -- dispatch ------------------------------------------------------------------
    def respond(self, request: Request) -> Response:
        seg = request.segments
        if seg == ["static", "dashboard.js"] and request.method == "GET":
            return Response(200, _script(), "text/javascript; charset=utf-8")
        try:
            if seg == ["login"]:
                return self.login(request)
            if seg == ["logout"] and request.method == "POST":
                return self.logout(request)
            identity = self.auth.identify(
                request.headers,
                request.cookies,
                request.client_address(self.trust_proxy),
                request.external_user,
            )
        except HANDLED as exc:
            return self.failure(request, None, exc)
        if identity is None:
            return self.unauthorized(request)
        ctx = templates.Context(
            request.root, identity.csrf, self.read_only, identity.user, identity.session
        )
        try:
            if request.method == "POST":
                return self.post(request, identity, ctx)
            if request.method in ("GET", "HEAD"):
                return self.get(request, ctx)
            raise HTTPError(405, f"method {request.method} not allowed")
        except HANDLED as exc:
            return self.failure(request, ctx, exc)

    def failure(self, request: Request, ctx: templates.Context | None, exc: Exception) -> Response:
        """The error page (or JSON) for one of the ``HANDLED`` exceptions."""
        status, message, headers = 400, str(exc), []
        if isinstance(exc, HTTPError):
            status, headers = exc.status, exc.headers
        elif isinstance(exc, Throttled):
            status, headers = 429, [("retry-after", str(exc.wait))]
        elif isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, JobIsActive):
            status = 409
        elif isinstance(exc, ConnectionFailed):
            status = 503
        elif isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            status, message = 503, f"cannot reach Redis at {redact(self.url)}: {exc}"
        response = _error(request, ctx, status, message)
        response.headers += headers
        return response

    def unauthorized(self, request: Request) -> Response:
        challenge = [("www-authenticate", 'Bearer realm="sandboxq"')]
        if not self.auth.tokens:  # the host application logs users in, not this form
            response = _error(request, None, 401, "authentication required: log in first")
        elif request.wants_json or request.method != "GET":
            response = Response.json({"error": "authentication required"}, 401)
        else:
            response = Response.html(self.login_page(request), 401)
        response.headers += challenge
        return response

    def login_page(self, request: Request, error: str = "") -> str:
        return templates.login_page(request.root, error, named=self.auth.named)

    def login(self, request: Request) -> Response:
        if not self.auth.tokens:  # nothing to log in with here
            return Response.redirect(request.root + "/")
        if request.method != "POST":
            return Response.html(self.login_page(request))
        if not _same_origin(request):
            raise HTTPError(403, "cross-origin request refused")
        form, address = request.form, request.client_address(self.trust_proxy)
        try:
            cookie = self.auth.login(form.get("username", ""), form.get("password", ""), address)
        except Throttled as exc:
            response = Response.html(self.login_page(request, f"{exc}."), 429)
            response.headers.append(("retry-after", str(exc.wait)))
            return response
        if cookie is None:
            return Response.html(
                self.login_page(
                    request, "Wrong user or token." if self.auth.named else "Wrong token."
                ),
                401,
            )
        response = Response.redirect(request.root + "/")
        response.headers.append(("set-cookie", self.cookie(request, cookie)))
        return response

    def logout(self, request: Request) -> Response:
        """Ends the session for good, server-side, whoever asks: a page of
        another site cannot send the (SameSite=Strict) cookie anyway."""
        self.auth.logout(request.cookies.get(SESSION_COOKIE, ""))
        response = Response.redirect(request.root + "/login")
        response.headers.append(("set-cookie", self.cookie(request, "")))
        return response

    def cookie(self, request: Request, value: str) -> str:
        """The session cookie's header (an empty ``value`` deletes it)."""
        parts = [
            f"{SESSION_COOKIE}={value}",
            f"Path={request.root or '/'}",
            "HttpOnly",
            "SameSite=Strict",
            f"Max-Age={math.ceil(self.auth.sessions.ttl) if value else 0}",
        ]
        if request.is_secure(self.trust_proxy):
            parts.append("Secure")
        return "; ".join(parts)

    def get(self, request: Request, ctx: templates.Context) -> Response:
        seg, query = request.segments, request.query
        api = bool(seg) and seg[0] == "api"
        path = seg[1:] if api else seg
        match path:
            case []:
                return Response.html(templates.overview_page(ctx, self.store.overview()))
            case ["queues"] if api:
                found = self.store.overview()
                for entry in found:  # the overview's small chart, drawn for dashboard.js
                    entry["last_hour_svg"] = templates.bars_svg(entry["last_hour"], 180, 30)
                return Response.json({"queues": found})
            case ["queues", q, "charts"]:
                charts = self.store.charts(q, query.get("span", "hour"))
                if api:
                    return Response.json({**charts, "svg": templates.chart_fragments(charts)})
                return Response.html(templates.charts_page(ctx, charts))
            case ["queues", q] | ["queues", q, "jobs"]:
                page = self.store.job_page(
                    q,
                    query.get("state", "failed"),
                    _int(query.get("page"), 1),
                    job_id=query.get("id", "").strip(),
                    search=query.get("q", "").strip(),
                )
                if api:
                    return Response.json(page)
                if page["job_id"] and page["jobs"]:  # found: straight to the job
                    return Response.redirect(
                        templates.url(request.root, "queues", q, "jobs", page["job_id"])
                    )
                return Response.html(templates.jobs_page(ctx, page))
            case ["queues", q, "jobs", job_id]:
                report = self.store.job(q, job_id)
                if api:
                    return Response.json(report)
                return Response.html(templates.job_page(ctx, report))
            case ["queues", q, "schedules"]:
                found = self.store.schedules(q)
                if api:
                    return Response.json({"queue": q, "schedules": found})
                return Response.html(templates.schedules_page(ctx, q, found))
            case ["logout"]:
                return Response.html(templates.logout_page(ctx))
        raise HTTPError(404, "no such page")

    # -- actions -------------------------------------------------------------------
    def post(self, request: Request, identity: Identity, ctx: templates.Context) -> Response:
        if self.read_only:
            raise HTTPError(403, "this dashboard is read-only")
        given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
        if not Auth.csrf_ok(identity, given):
            raise HTTPError(403, "missing or wrong CSRF token; reload the page")
        if not _same_origin(request):
            raise HTTPError(403, "cross-origin request refused")
        path = request.segments[1:] if request.segments[:1] == ["api"] else request.segments
        by = f"dashboard:{identity.user}"
        scripted = request.wants_json or CSRF_HEADER in request.headers
        asks = len(path) == 3 and path[0] == "queues" and path[2] == "retry-failed"
        if asks and not scripted and "confirm" not in request.form:
            # A browser's form post without JavaScript: ask first.
            failed = self.store.queue(path[1]).counts()["failed"]
            return Response.html(templates.confirm_retry_failed(ctx, path[1], failed))
        message, result, back = actions.act(self.store, path, request, by)
        if scripted:
            return Response.json({"ok": True, "message": message, "result": result})
        return Response.redirect(back)


# -- helpers -------------------------------------------------------------------------
def _error(request: Request, ctx: templates.Context | None, status: int, message: str) -> Response:
    if request.wants_json or CSRF_HEADER in request.headers:
        return Response.json({"error": message}, status)
    return Response.html(templates.error_page(ctx, status, message), status)


def _same_origin(request: Request) -> bool:
    """A browser's Origin, when sent, must name this host."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin != "null"
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


_SCRIPT: bytes | None = None


def _script() -> bytes:
    global _SCRIPT
    if _SCRIPT is None:
        _SCRIPT = resources.files("sandboxq.dashboard").joinpath("static/dashboard.js").read_bytes()
    return _SCRIPT


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
