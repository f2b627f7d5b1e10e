"""The dashboard's ASGI app over HTTP, in process (tests/asgi_client.py),
against the real Redis of the session: authentication, CSRF, read-only,
redaction, pagination and the audit entry of every action."""

from __future__ import annotations

import hashlib
import logging
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Mount

from sandboxq import Queue
from sandboxq.dashboard import app
from sandboxq.dashboard.app import DEFAULT_REDACT, TOKEN_ENV, Dashboard
from sandboxq.dashboard.redact import Redactor
from sandboxq.dashboard.server import LOOPBACK_NAMES, allowed_hosts, check_auth, is_loopback
from sandboxq.dashboard.users import TokenHash, hash_token, parse_users
from sandboxq.stats import RETENTION_SECONDS, bucket, flush_commands, minute_of
from sandboxq.testing import run_until_empty
from tests.asgi_client import Client, loopback_address
from tests.dashboard_data import fill_completed
from tests.dashboard_server import DashboardServer
from tests.worker_harness import ROOT, wait_until

TOKEN = "t0ken-for-the-tests"


@pytest.fixture
def dash(redis_url: str, queue: Queue) -> Iterator[Dashboard]:
    application = app(redis_url, token=TOKEN, queues=[queue.name])
    yield application
    application.client.close()


@pytest.fixture
def user(dash: Dashboard) -> Client:
    return Client(dash).bearer(TOKEN)


def csrf_of(client: Client, path: str = "/") -> str:
    page = client.get(path)
    assert page.status == 200, page.text
    found = re.search(r'name="sandboxq-csrf" content="([^"]+)"', page.text)
    assert found is not None
    return found[1]


def failing_job(queue: Queue, data: object = None) -> str:
    job = queue.add("raise_error", data)
    run_until_empty(queue, {"raise_error": _fail})
    assert queue.get_job(job.id).state == "failed"  # type: ignore[union-attr]
    return job.id


def _fail(job: object) -> None:
    raise ValueError("boom")


# -- authentication ------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/api/queues", "/queues/x/jobs/1"])
def test_requests_without_auth_get_401(dash: Dashboard, path: str) -> None:
    reply = Client(dash).get(path)
    assert reply.status == 401
    assert reply.header("www-authenticate") == 'Bearer realm="sandboxq"'


def test_api_401_is_json_and_html_401_is_the_login_form(dash: Dashboard) -> None:
    api = Client(dash).get("/api/queues")
    assert api.json() == {"error": "authentication required"}
    page = Client(dash).get("/")
    assert 'action="/login"' in page.text and 'type="password"' in page.text


def test_wrong_credentials_are_refused(dash: Dashboard) -> None:
    assert Client(dash).bearer("nope").get("/").status == 401
    assert Client(dash).basic("alice", "nope").get("/").status == 401
    assert Client(dash, cookies={"sandboxq_session": "alice:x:forged"}).get("/").status == 401


def test_bearer_and_basic_auth_are_accepted(dash: Dashboard, queue: Queue) -> None:
    queue.add("ok")
    assert Client(dash).bearer(TOKEN).get("/api/queues").status == 200
    reply = Client(dash).basic("alice", TOKEN).get("/")
    assert reply.status == 200
    assert "alice" in reply.text and queue.name in reply.text


def test_login_form_sets_an_httponly_strict_random_session_cookie(dash: Dashboard) -> None:
    browser = Client(dash)
    assert browser.get("/login").status == 200
    bad = browser.post("/login", {"username": "bob", "password": "wrong"})
    assert bad.status == 401 and "Wrong token" in bad.text
    assert not browser.cookies
    reply = browser.post("/login", {"username": "bob", "password": TOKEN})
    assert reply.status == 303 and reply.header("location") == "/"
    cookie = reply.header("set-cookie")
    assert cookie is not None
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain HTTP: the browser would drop a Secure cookie
    assert TOKEN not in cookie and "bob" not in cookie
    assert len(browser.cookies["sandboxq_session"]) >= 40
    page = browser.get("/")
    assert page.status == 200 and 'action="/logout"' in page.text
    assert 'action="/logout"' in browser.get("/logout").text  # a button, not a logout
    assert browser.get("/").status == 200
    browser.post("/logout")
    assert browser.get("/").status == 401
    assert 'action="/logout"' not in Client(dash).bearer(TOKEN).get("/").text


def logged_in(application: Dashboard, name: str = "alice", **client: str) -> Client:
    browser = Client(application, **client)  # type: ignore[arg-type]
    reply = browser.post("/login", {"username": name, "password": TOKEN})
    assert reply.status == 303, reply.text
    return browser


def test_logout_revokes_the_session_server_side(dash: Dashboard, queue: Queue) -> None:
    browser = logged_in(dash)
    token = csrf_of(browser)
    stolen = dict(browser.cookies)
    assert browser.post("/logout").status == 303
    # The old cookie and its CSRF token, replayed after the logout, act no more.
    replay = Client(dash, cookies=stolen)
    assert replay.get("/").status == 401
    assert replay.post(f"/queues/{queue.name}/pause", {"csrf_token": token}).status == 401
    assert replay.post(f"/queues/{queue.name}/pause", {}, x_csrf_token=token).status == 401
    assert not queue.is_paused()


def test_sessions_expire(redis_url: str, queue: Queue) -> None:
    application = app(redis_url, token=TOKEN, queues=[queue.name], session_ttl=0.5)
    try:
        browser = logged_in(application)
        assert "Max-Age=0" not in str(browser.cookies)
        assert browser.get("/").status == 200
        deadline = time.monotonic() + 5
        while browser.get("/api/queues").status == 200:
            assert time.monotonic() < deadline, "the session outlived its TTL"
            time.sleep(0.1)
        assert browser.get("/").status == 401
    finally:
        application.client.close()
    for wrong in (0, -1, float("nan"), 1e20):
        with pytest.raises(ValueError, match="session_ttl"):
            app(redis_url, token=TOKEN, session_ttl=wrong)


def test_sessions_live_in_redis_keyed_by_a_hash_of_the_cookie(
    dash: Dashboard, client: redis.Redis
) -> None:
    browser = logged_in(dash)
    cookie = browser.cookies["sandboxq_session"]
    key = "sq:dashboard:session:" + hashlib.sha256(cookie.encode()).hexdigest()
    stored = client.get(key)
    assert stored is not None and cookie.encode() not in stored
    assert 43_000_000 < client.pttl(key) <= 43_200_000
    assert not any(cookie.encode() in k for k in client.scan_iter("sq:dashboard:*"))
    browser.post("/logout")
    assert not client.exists(key)


def test_sessions_are_shared_across_processes_until_the_token_changes(
    redis_url: str, dash: Dashboard, queue: Queue
) -> None:
    """Another dashboard process (a uvicorn worker, a restart) knows the
    session; one started with a new token (a rotation) does not."""
    browser = logged_in(dash)
    token = csrf_of(browser)
    twin = app(redis_url, token=TOKEN, queues=[queue.name])
    rotated = app(redis_url, token="another-t0ken-for-the-tests", queues=[queue.name])
    try:
        on_twin = Client(twin, cookies=dict(browser.cookies))
        assert on_twin.post(f"/queues/{queue.name}/pause", {"csrf_token": token}).status == 303
        assert queue.is_paused()
        assert Client(rotated, cookies=dict(browser.cookies)).get("/").status == 401
    finally:
        twin.client.close()
        rotated.client.close()


def test_the_cookie_is_secure_over_https(redis_url: str, dash: Dashboard) -> None:
    def cookie_of(application: Dashboard, **headers: str) -> str:
        browser = Client(application, scheme=headers.pop("scheme", "http"))
        reply = browser.post("/login", {"username": "a", "password": TOKEN}, **headers)
        return reply.header("set-cookie") or ""

    assert "; Secure" in cookie_of(dash, scheme="https")
    assert "; Secure" not in cookie_of(dash)
    # A proxy's word counts only when it is trusted.
    assert "; Secure" not in cookie_of(dash, x_forwarded_proto="https")
    proxied = app(redis_url, token=TOKEN, trust_proxy_headers=True)
    try:
        assert "; Secure" in cookie_of(proxied, x_forwarded_proto="https")
        assert "; Secure" not in cookie_of(proxied, x_forwarded_proto="http")
        logout = Client(proxied, scheme="https").post("/logout").header("set-cookie") or ""
        assert "Max-Age=0" in logout and "; Secure" in logout
    finally:
        proxied.client.close()


def test_server_flags_session_ttl_and_trust_proxy_headers(redis_url: str) -> None:
    args = ["--session-ttl", "1m", "--trust-proxy-headers"]
    with DashboardServer(redis_url, args, env={TOKEN_ENV: TOKEN}) as server:
        reply = server.request(
            "POST",
            "/login",
            form={"username": "a", "password": TOKEN},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert reply.status == 303, reply.text
        cookie = reply.header("set-cookie") or ""
        assert "Max-Age=60;" in cookie and cookie.endswith("; Secure")


# -- login throttling -------------------------------------------------------------------
def test_login_guesses_are_throttled_after_five(dash: Dashboard, client: redis.Redis) -> None:
    guesser = Client(dash)
    statuses = [
        guesser.post("/login", {"username": "x", "password": f"guess-{i}"}).status
        for i in range(20)
    ]
    assert statuses == [401] * 5 + [429] * 15
    # Locked out, even with the right token, and told for how long.
    reply = guesser.post("/login", {"username": "x", "password": TOKEN})
    assert reply.status == 429 and "too many failed logins" in reply.text
    assert 1 <= int(reply.header("retry-after") or 0) <= 60
    assert not guesser.cookies
    assert 0 < client.pttl(f"sq:dashboard:failures:{guesser.address}") <= 60_000
    # Another client is not.
    assert logged_in(dash).get("/").status == 200


def test_bearer_and_basic_guesses_are_throttled_too(dash: Dashboard) -> None:
    guesser = Client(dash)
    assert guesser.bearer("guess").get("/api/queues").status == 401
    assert guesser.basic("x", "guess").get("/api/queues").status == 401
    assert guesser.post("/login", {"password": "guess"}).status == 401
    assert guesser.bearer("guess").get("/api/queues").status == 401
    assert guesser.basic("x", "guess").get("/").status == 401
    locked = guesser.bearer(TOKEN).get("/api/queues")
    assert locked.status == 429 and "too many failed logins" in locked.json()["error"]
    assert locked.header("retry-after") is not None
    # Asking without credentials is no guess.
    fresh = Client(dash)
    for _ in range(6):
        assert fresh.get("/api/queues").status == 401
    assert fresh.bearer(TOKEN).get("/api/queues").status == 200


def test_throttling_counts_the_forwarded_client_behind_a_trusted_proxy(
    redis_url: str, dash: Dashboard
) -> None:
    proxy = loopback_address()

    def guesses(application: Dashboard, forwarded_for: str) -> list[int]:
        guesser = Client(application, address=proxy)
        form = {"password": "guess"}
        return [
            guesser.post("/login", form, x_forwarded_for=forwarded_for).status for _ in range(6)
        ]

    # Untrusted, X-Forwarded-For is the client's say: ignored.
    assert guesses(dash, "203.0.113.1") == [401] * 5 + [429]
    assert guesses(dash, "203.0.113.2") == [429] * 6
    proxied = app(redis_url, token=TOKEN, trust_proxy_headers=True)
    try:
        first, second = (loopback_address() for _ in range(2))
        assert guesses(proxied, f"{first}") == [401] * 5 + [429]
        # The address the proxy appended counts, not what the client sent.
        assert guesses(proxied, f"{first}, {second}") == [401] * 5 + [429]
        assert guesses(proxied, f"{second}") == [429] * 6
    finally:
        proxied.client.close()


# -- who acted: shared-token names are unverified; named users are verified ---------------
ALICE, BOB = "alice-own-t0ken-1234", "bob-own-t0ken-5678"


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.txt"
    path.write_text(
        f"# dashboard users\nalice:{hash_token(ALICE)}\n\nbob:{hash_token(BOB)}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def named(redis_url: str, queue: Queue, users_file: Path) -> Iterator[Dashboard]:
    application = app(redis_url, users=users_file, queues=[queue.name])
    yield application
    application.client.close()


def pause_as(browser: Client, queue: Queue) -> str:
    """Pause ``queue`` as ``browser``; who the audit says did it."""
    reply = browser.post(f"/queues/{queue.name}/pause", {}, x_csrf_token=csrf_of(browser))
    assert reply.status == 200, reply.text
    by: str = queue.audit_log()[0]["by"]
    queue.resume()
    return by


def test_a_name_typed_with_the_shared_token_is_audited_as_unverified(
    dash: Dashboard, queue: Queue
) -> None:
    carol = logged_in(dash, "carol")
    assert "carol (unverified)" in carol.get("/").text
    assert pause_as(carol, queue) == "dashboard:carol (unverified)"
    assert pause_as(logged_in(dash, ""), queue) == "dashboard:token"
    assert pause_as(Client(dash).bearer(TOKEN), queue) == "dashboard:token"
    assert pause_as(Client(dash).basic("dave", TOKEN), queue) == "dashboard:dave (unverified)"
    assert pause_as(Client(dash).basic("", TOKEN), queue) == "dashboard:token"


def test_named_users_log_in_with_their_own_token_and_are_audited_by_name(
    named: Dashboard, queue: Queue
) -> None:
    page = Client(named).get("/login").text
    assert "unverified" not in page and "required" in page
    alice = Client(named)
    assert alice.post("/login", {"username": "alice", "password": ALICE}).status == 303
    assert "alice" in alice.get("/").text and "unverified" not in alice.get("/").text
    assert pause_as(alice, queue) == "dashboard:alice"
    # Someone else's token, an unknown name, the name alone: refused.
    for name, token in (("alice", BOB), ("mallory", ALICE), ("alice", ""), ("", ALICE)):
        reply = Client(named).post("/login", {"username": name, "password": token})
        assert reply.status == 401 and "Wrong user or token" in reply.text
    # API clients: basic auth, or a bearer token NAME:TOKEN.
    assert pause_as(Client(named).basic("bob", BOB), queue) == "dashboard:bob"
    assert pause_as(Client(named).bearer(f"bob:{BOB}"), queue) == "dashboard:bob"
    assert Client(named).bearer(BOB).get("/api/queues").status == 401
    assert Client(named).basic("alice", BOB).get("/api/queues").status == 401


def test_a_users_session_dies_with_the_user_or_their_token(
    redis_url: str, named: Dashboard, queue: Queue, tmp_path: Path
) -> None:
    alice = Client(named)
    alice.post("/login", {"username": "alice", "password": ALICE})
    cookies = dict(alice.cookies)
    assert Client(named, cookies=cookies).get("/").status == 200
    for users in ({"bob": str(hash_token(BOB))}, {"alice": str(hash_token(ALICE))}):
        changed = app(redis_url, users=users, queues=[queue.name])
        try:
            assert Client(changed, cookies=cookies).get("/").status == 401
        finally:
            changed.client.close()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "names no user"),
        ("alice", "line 1: expected NAME:scrypt"),
        ("# ok\nal ice:scrypt$x", "line 2: expected NAME"),
        ("alice:plain-text-token", "line 1: not a token hash"),
        ("alice:scrypt$1024$8$1$" + "00" * 16 + "$" + "00" * 32, "N=1024 r=8 p=1 refused"),
        ("alice:scrypt$1048576$32$1$" + "00" * 16 + "$" + "00" * 32, "over 256 MiB"),
    ],
)
def test_a_bad_users_file_is_refused_naming_the_line(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_users(text)


def test_duplicate_users_and_both_kinds_of_auth_are_refused(redis_url: str) -> None:
    hashed = str(hash_token(ALICE))
    with pytest.raises(ValueError, match="named twice"):
        parse_users(f"alice:{hashed}\nalice:{hashed}")
    with pytest.raises(ValueError, match="not both"):
        app(redis_url, token=TOKEN, users={"alice": hashed})
    with pytest.raises(ValueError, match="cannot read the users file"):
        app(redis_url, users="/nonexistent/users.txt")


def test_hash_token_reads_stdin_and_refuses_short_or_several_tokens() -> None:
    done = dashboard_cli("hash-token", stdin=f"{ALICE}\n")
    assert done.returncode == 0, done.stderr
    assert TokenHash.parse(done.stdout).verify(ALICE)
    assert not TokenHash.parse(done.stdout).verify(BOB)
    for stdin, problem in (("short\n", "at least 16"), (f"{ALICE}\n{BOB}\n", "one line")):
        refused = dashboard_cli("hash-token", stdin=stdin)
        assert refused.returncode == 2 and problem in refused.stderr
        assert not refused.stdout


def test_hash_token_prompts_without_echo_on_a_terminal() -> None:
    primary, secondary = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "sandboxq", "dashboard", "hash-token"],
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=secondary,
        start_new_session=True,  # no controlling terminal: getpass uses stdin's
        cwd=ROOT,
    )
    os.close(secondary)
    try:
        seen = b""
        for _ in range(2):
            while not seen.rstrip().endswith(b":"):
                seen += os.read(primary, 1024)
            os.write(primary, ALICE.encode() + b"\n")
            seen += b"|"
        out, _ = child.communicate(timeout=30)
    finally:
        os.close(primary)
    assert child.returncode == 0
    assert TokenHash.parse(out.decode()).verify(ALICE)
    assert ALICE.encode() not in seen  # not echoed


def test_server_with_a_users_file_audits_the_user(
    redis_url: str, queue: Queue, users_file: Path
) -> None:
    queue.add("ok")
    with DashboardServer(redis_url, ["--users", str(users_file)]) as server:
        login = server.request("POST", "/login", form={"username": "bob", "password": BOB})
        assert login.status == 303, login.text
        cookie = (login.header("set-cookie") or "").partition(";")[0]
        page = server.request("GET", "/", headers={"Cookie": cookie})
        paused = server.request(
            "POST",
            f"/queues/{queue.name}/pause",
            form={"csrf_token": _csrf_in(page.text)},
            headers={"Cookie": cookie},
        )
        assert paused.status == 303, paused.text
    assert queue.audit_log()[0]["by"] == "dashboard:bob"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--users", "u.txt", "--token", TOKEN], "not both"),
        (["--users", "u.txt", "--no-auth"], "contradicts"),
        (["--users", "/nonexistent/users.txt"], "cannot read the users file"),
        (["--session-ttl", "0", "--no-auth"], "session_ttl"),
    ],
)
def test_server_refuses_contradictory_auth_flags(
    redis_url: str, args: list[str], problem: str
) -> None:
    done = dashboard_cli(*args, "--port", "1", redis_url=redis_url)
    assert done.returncode == 2 and problem in done.stderr, done.stderr


def test_links_respect_root_path(dash: Dashboard, queue: Queue) -> None:
    queue.add("ok")
    mounted = Client(dash, root_path="/admin/queues").bearer(TOKEN)
    page = mounted.get("/")
    assert page.status == 200
    assert 'src="/admin/queues/static/dashboard.js"' in page.text
    assert f'href="/admin/queues/queues/{queue.name}"' in page.text
    assert mounted.get(f"/queues/{queue.name}?state=waiting").status == 200


# -- CSRF and read-only ----------------------------------------------------------------
def test_post_without_or_with_a_wrong_csrf_token_is_refused(user: Client, queue: Queue) -> None:
    assert user.post(f"/queues/{queue.name}/pause", {}).status == 403
    assert user.post(f"/queues/{queue.name}/pause", {"csrf_token": "x" * 64}).status == 403
    assert not queue.is_paused()
    assert queue.audit_log() == []


def test_csrf_token_is_bound_to_the_session(dash: Dashboard, queue: Queue) -> None:
    alice = Client(dash)
    alice.post("/login", {"username": "alice", "password": TOKEN})
    mallory = Client(dash)
    mallory.post("/login", {"username": "mallory", "password": TOKEN})
    token = csrf_of(mallory)
    assert alice.post(f"/queues/{queue.name}/pause", {"csrf_token": token}).status == 403
    assert alice.post(f"/queues/{queue.name}/pause", {"csrf_token": csrf_of(alice)}).status == 303


def test_cross_origin_post_is_refused(user: Client, queue: Queue) -> None:
    token = csrf_of(user)
    reply = user.post(
        f"/queues/{queue.name}/pause", {"csrf_token": token}, origin="http://evil.example"
    )
    assert reply.status == 403 and not queue.is_paused()


def test_read_only_hides_actions_and_refuses_posts(redis_url: str, queue: Queue) -> None:
    job_id = failing_job(queue)
    application = app(redis_url, token=TOKEN, read_only=True)
    try:
        ro = Client(application).bearer(TOKEN)
        page = ro.get(f"/queues/{queue.name}/jobs/{job_id}")
        assert page.status == 200 and "<form" not in page.text and "read-only" in page.text
        token = re.search(r'name="sandboxq-csrf" content="([^"]+)"', page.text)[1]  # type: ignore[index]
        for path in (f"/queues/{queue.name}/jobs/{job_id}/retry", f"/queues/{queue.name}/pause"):
            assert ro.post(path, {"csrf_token": token}).status == 403
        assert queue.get_job(job_id).state == "failed"  # type: ignore[union-attr]
        assert not queue.is_paused()
    finally:
        application.client.close()


# -- redaction ------------------------------------------------------------------------
def test_sensitive_fields_are_redacted_everywhere(user: Client, queue: Queue) -> None:
    data = {
        "user": {"name": "ann", "Password": "hunter2", "cards": [{"CARD_number": "4111"}]},
        "items": [{"api_token": "abc123"}, {"keep": "visible-value"}],
        "client_secret": {"nested": "s3cr3t"},
    }
    job = queue.add("ok", data)
    run_until_empty(queue, {"ok": lambda j: {"echo": j.data, "token": "tok-result"}})
    report = user.get(f"/api/queues/{queue.name}/jobs/{job.id}").json()
    assert report["data"] == {
        "user": {"name": "ann", "Password": "[redacted]", "cards": "[redacted]"},
        "items": [{"api_token": "[redacted]"}, {"keep": "visible-value"}],
        "client_secret": "[redacted]",
    }
    assert report["result"]["token"] == "[redacted]"
    page = user.get(f"/queues/{queue.name}/jobs/{job.id}").text
    for secret in ("hunter2", "4111", "abc123", "s3cr3t", "tok-result"):
        assert secret not in page
        assert secret not in str(report)
    assert "visible-value" in page


def _leaky(job: Any) -> None:
    job.log(f"connecting as {job.data['user']} with {job.data['password']}")
    job.log(f"payload {job.data}")
    job.log("retrying with api_token=tok-only-in-the-log&attempt=2")
    raise ValueError(f"login refused: {job.data['password']} / {job.data['keys']}")


def test_secrets_are_redacted_in_errors_tracebacks_and_logs(user: Client, queue: Queue) -> None:
    data = {"user": "ann", "password": "hunter2", "keys": {"client_secret": 123456789}}
    job = queue.add("leaky", data)
    run_until_empty(queue, {"leaky": _leaky})
    report = user.get(f"/api/queues/{queue.name}/jobs/{job.id}").json()
    assert report["state"] == "failed" and "login refused" in report["error"]
    page = user.get(f"/queues/{queue.name}/jobs/{job.id}").text
    listed = user.get(f"/api/queues/{queue.name}/jobs?state=failed").json()["jobs"]
    list_page = user.get(f"/queues/{queue.name}?state=failed").text
    for shown in (str(report), page, str(listed), list_page):
        for secret in ("hunter2", "123456789", "tok-only-in-the-log"):
            assert secret not in shown
    assert report["logs"][0] == "connecting as ann with [redacted]"
    assert "'password': '[redacted]'" in report["logs"][1]
    assert report["logs"][2] == "retrying with api_token=[redacted]&attempt=2"
    assert "Traceback" in report["traceback"] and "[redacted]" in report["traceback"]
    assert listed[0]["error"].startswith("ValueError: login refused: [redacted]")


def _stepped(job: Any) -> None:
    job.step("fetch <page>", lambda: {"rows": 3, "api_token": "tok-in-a-step"})
    job.step("charge", lambda: "ch_42")
    raise ValueError("after the steps")


def test_job_page_and_api_show_recorded_steps_redacted(user: Client, queue: Queue) -> None:
    job = queue.add("stepped", {"n": 1})
    run_until_empty(queue, {"stepped": _stepped})
    report = user.get(f"/api/queues/{queue.name}/jobs/{job.id}").json()
    assert report["state"] == "failed"
    assert report["steps"] == {
        "fetch <page>": {"rows": 3, "api_token": "[redacted]"},
        "charge": "ch_42",
    }
    assert list(report["steps"]) == ["fetch <page>", "charge"]
    page = user.get(f"/queues/{queue.name}/jobs/{job.id}").text
    assert "tok-in-a-step" not in page and "tok-in-a-step" not in str(report)
    assert 'data-field="step_count">2<' in page
    assert '<tr data-step="fetch &lt;page&gt;"><td>fetch &lt;page&gt;</td>' in page
    assert page.index("fetch &lt;page&gt;") < page.index("ch_42")


def test_job_page_and_api_show_a_jobs_dedupe_id(user: Client, queue: Queue) -> None:
    # Given a job added with a dedupe id, and one without
    job = queue.add("index", {"doc": 42}, dedupe={"id": "doc-<42>"})
    plain = queue.add("index", {"doc": 43})

    # Then its report and page show the id; the other's say nothing of it
    report = user.get(f"/api/queues/{queue.name}/jobs/{job.id}").json()
    assert report["dedupe_id"] == "doc-<42>"
    page = user.get(f"/queues/{queue.name}/jobs/{job.id}").text
    assert '<th>Dedupe id</th><td><span data-field="dedupe_id">doc-&lt;42&gt;</span>' in page
    assert user.get(f"/api/queues/{queue.name}/jobs/{plain.id}").json()["dedupe_id"] is None
    assert "Dedupe id" not in user.get(f"/queues/{queue.name}/jobs/{plain.id}").text


def test_steps_recorded_through_the_scripts_show_up(user: Client, queue: Queue) -> None:
    job = queue.add("leased", None)
    queue.scripts.fetch(queue.keys, int(time.time() * 1000), 1, "w", 60_000)
    status = queue.scripts.step(queue.keys, "w", [(job.id, "only", '{"ok":true}')], 10)
    assert status == ["recorded"]
    report = user.get(f"/api/queues/{queue.name}/jobs/{job.id}").json()
    assert report["state"] == "active" and report["steps"] == {"only": {"ok": True}}
    empty = queue.add("plain", None)
    assert user.get(f"/api/queues/{queue.name}/jobs/{empty.id}").json()["steps"] == {}
    assert 'data-field="step_count">0<' in user.get(f"/queues/{queue.name}/jobs/{empty.id}").text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("password=hunter2&x=1", "password=[redacted]&x=1"),
        ("{'Password': 'hunter2', 'n': 1}", "{'Password': '[redacted]', 'n': 1}"),
        ('{"api_token":"abc", "n": 1}', '{"api_token":"[redacted]", "n": 1}'),
        ("    password = data['password']", "    password = data['password']"),
        ("KeyError: 'token'", "KeyError: 'token'"),
        ("the pin is 42, the key s3cr3t-value", "the pin is 42, the key [redacted]"),
    ],
)
def test_redaction_in_text(text: str, shown: str) -> None:
    hide = Redactor(DEFAULT_REDACT).in_text({"secret": {"pin": 42, "key": "s3cr3t-value"}})
    assert hide(text) == shown
    assert Redactor(()).in_text({"secret": "s3cr3t-value"})(text) == text


def test_html_is_escaped(user: Client, queue: Queue) -> None:
    job = queue.add("ok", {"x": "<script>alert(1)</script>"}, job_id="<b>id</b>")
    page = user.get(f"/queues/{queue.name}/jobs/%3Cb%3Eid%3C%2Fb%3E")
    assert page.status == 200, page.text
    assert "<script>alert(1)" not in page.text and "&lt;b&gt;id&lt;/b&gt;" in page.text
    assert job.id == "<b>id</b>"


# -- pages ----------------------------------------------------------------------------
def test_pagination_over_5000_completed_jobs(user: Client, queue: Queue) -> None:
    ids = fill_completed(queue, 5000)
    queue.add("ok")  # the queue's events stream, as any real queue has
    newest_first = ids[::-1]
    page = user.get(f"/api/queues/{queue.name}/jobs?state=completed&page=3").json()
    assert page["total"] == 5000 and page["pages"] == 100 and page["page"] == 3
    assert [j["id"] for j in page["jobs"]] == newest_first[100:150]
    last = user.get(f"/api/queues/{queue.name}/jobs?state=completed&page=100").json()
    assert [j["id"] for j in last["jobs"]] == newest_first[4950:]
    html = user.get(f"/queues/{queue.name}?state=completed&page=2")
    assert html.status == 200 and f">{newest_first[50]}<" in html.text
    assert "page=3" in html.text and "page=1" in html.text


def test_waiting_pages_include_grouped_jobs(user: Client, queue: Queue) -> None:
    plain = queue.add("ok").id
    grouped = queue.add("ok", group="customer-42").id
    page = user.get(f"/api/queues/{queue.name}/jobs?state=waiting").json()
    assert page["total"] == 2
    assert [j["id"] for j in page["jobs"]] == [plain, grouped]


def test_search_by_id_and_by_name(user: Client, queue: Queue) -> None:
    fill_completed(queue, 120)
    queue.add("ok")
    found = user.get(f"/api/queues/{queue.name}/jobs?state=completed&id=7").json()
    assert [j["id"] for j in found["jobs"]] == ["7"]
    missing = user.get(f"/api/queues/{queue.name}/jobs?state=completed&id=nope").json()
    assert missing["jobs"] == []
    named = user.get(f"/api/queues/{queue.name}/jobs?state=completed&q=bulk-3").json()
    assert named["jobs"] and all(j["name"] == "bulk-3" for j in named["jobs"])


def test_search_by_name_pages_through_the_first_ids_of_the_state(
    user: Client, queue: Queue
) -> None:
    for _ in range(70):
        queue.add("other")
    needles = [queue.add(f"send-<needle>-{i}").id for i in range(3)]
    queue.add("other")
    api = f"/api/queues/{queue.name}/jobs?state=waiting"
    found = user.get(f"{api}&q=NEEDLE").json()
    assert [j["id"] for j in found["jobs"]] == needles  # beyond the first page of 50
    assert found["matched"] == 3 and found["scanned"] == 74 and found["pages"] == 1
    assert found["scan_limit"] == 5000 and found["total"] == 74
    assert user.get(f"{api}&q=nothing-like-it").json()["jobs"] == []
    html = user.get(f"/queues/{queue.name}?state=waiting&q=%3Cneedle%3E").text
    assert "send-&lt;needle&gt;-0" in html and "<needle>" not in html
    assert "among the first 74 of 74" in html and ">other<" not in html


def test_search_by_id_goes_straight_to_the_job(user: Client, queue: Queue) -> None:
    job = queue.add("ok")
    found = user.get(f"/queues/{queue.name}?state=failed&id={job.id}")
    assert found.status == 303
    assert found.header("location") == f"/queues/{queue.name}/jobs/{job.id}"
    missing = user.get(f"/queues/{queue.name}?state=failed&id=nope%3Cb%3E")
    assert missing.status == 200 and "No failed jobs match" in missing.text
    assert "nope<b>" not in missing.text


def _record_stats(queue: Queue, counts: dict[tuple[str, int, str], int]) -> None:
    """Write counts as a worker's step does (sandboxq.stats.flush_commands)."""
    pipe = queue.client.pipeline(transaction=False)
    for command in flush_commands({queue.name: queue.keys}, counts):
        pipe.execute_command(*command)
    pipe.execute()


def test_charts_draw_the_workers_counts_as_svg(user: Client, queue: Queue) -> None:
    # Not in a minute's last seconds: the page must read the minute written here.
    wait_until(lambda: time.time() % 60 < 50, 15, "a minute's first 50 seconds")
    now = minute_of(int(time.time() * 1000))
    q, name = queue.name, "<b>resize</b>"
    _record_stats(
        queue,
        {
            (q, now, "completed"): 7,
            (q, now, "failed"): 2,
            (q, now - 1, "completed"): 3,
            (q, now, f"rt:{bucket(8)}:{name}"): 9,
            (q, now - 1, f"rt:{bucket(400)}:{name}"): 1,
            (q, now - 90, "completed"): 100,  # beyond the hour, within the day
        },
    )
    queue.client.hset(queue.keys.stats(now), mapping={"waiting": 4, "active": 1})
    hour = user.get(f"/api/queues/{q}/charts").json()
    assert hour["span"] == "hour" and hour["per_minutes"] == 1 and len(hour["points"]) == 60
    assert hour["points"][-1] == {
        "minute": now,
        "completed": 7,
        "failed": 2,
        "waiting": 4,
        "active": 1,
    }
    assert hour["points"][-2]["completed"] == 3 and hour["points"][-2]["waiting"] is None
    assert hour["run_times"] == {name: {"runs": 10, "p50_ms": 10.0, "p95_ms": 500.0}}
    day = user.get(f"/api/queues/{q}/charts?span=day").json()
    assert len(day["points"]) == 144 and sum(p["completed"] for p in day["points"]) == 110
    page = user.get(f"/queues/{q}/charts").text
    assert page.count('<g class="bar">') == 60 and page.count('class="line"') == 2
    assert "&lt;b&gt;resize&lt;/b&gt;" in page and "<b>resize" not in page
    assert user.get(f"/queues/{q}/charts?span=day").text.count('<g class="bar">') == 144
    assert user.get(f"/queues/{q}/charts?span=week").status == 404
    overview = user.get("/").text
    assert 'data-chart="last_hour"' in overview and overview.count('<g class="bar">') == 60
    listed = user.get("/api/queues").json()["queues"][0]
    assert listed["last_hour"][-1]["completed"] == 7
    assert listed["last_hour_svg"].count('<g class="bar">') == 60
    for minute in (now, now - 1, now - 90):
        assert 0 < queue.client.ttl(queue.keys.stats(minute)) <= RETENTION_SECONDS


def test_overview_job_and_schedules_pages(user: Client, queue: Queue) -> None:
    job_id = failing_job(queue, {"n": 1})
    queue.schedule("nightly", cron="30 2 * * *", data={"secret": "zzz"})
    overview = user.get("/").text
    assert queue.name in overview and 'data-count="failed"' in overview
    stats = user.get("/api/queues").json()["queues"]
    assert stats[0]["counts"]["failed"] == 1 and stats[0]["paused"] is False
    job = user.get(f"/queues/{queue.name}/jobs/{job_id}").text
    assert "ValueError: boom" in job and "Traceback" in job
    schedules = user.get(f"/queues/{queue.name}/schedules")
    assert schedules.status == 200 and "nightly" in schedules.text
    assert "30 2 * * *" in schedules.text
    assert "zzz" not in schedules.text
    assert user.get(f"/queues/{queue.name}/jobs/999999").status == 404
    assert user.get("/queues/not-served").status == 404


def test_flow_links(user: Client, queue: Queue) -> None:
    flow = queue.add_flow(parent={"name": "parent"}, children=[{"name": "child"}])
    child = flow.children[0].job
    run_until_empty(queue, {"child": lambda j: {"c": 1}, "parent": lambda j: "p"})
    parent_page = user.get(f"/queues/{queue.name}/jobs/{flow.job.id}").text
    assert f'href="/queues/{queue.name}/jobs/{child.id}"' in parent_page
    child_page = user.get(f"/queues/{queue.name}/jobs/{child.id}").text
    assert f'href="/queues/{queue.name}/jobs/{flow.job.id}"' in child_page


# -- actions and their audit entries ------------------------------------------------------
def test_each_action_writes_its_audit_entry(dash: Dashboard, queue: Queue) -> None:
    browser = Client(dash)
    browser.post("/login", {"username": "carol", "password": TOKEN})
    token = csrf_of(browser)
    q = queue.name
    by = "dashboard:carol (unverified)"

    def post(path: str, **form: str) -> None:
        reply = browser.post(path, {"csrf_token": token, **form})
        assert reply.status == 303, reply.text

    failed = failing_job(queue)
    post(f"/queues/{q}/jobs/{failed}/retry")
    assert queue.get_job(failed).audit()[-1]["by"] == by  # type: ignore[union-attr]
    run_until_empty(queue, {"raise_error": _fail})
    post(f"/queues/{q}/retry-failed", confirm="yes")
    delayed = queue.add("ok", delay=3600).id
    post(f"/queues/{q}/jobs/{delayed}/promote")
    assert queue.get_job(delayed).state == "waiting"  # type: ignore[union-attr]
    post(f"/queues/{q}/jobs/{delayed}/remove")
    assert queue.get_job(delayed) is None
    post(f"/queues/{q}/pause")
    assert queue.is_paused()
    post(f"/queues/{q}/resume")
    post(f"/queues/{q}/clean", state="waiting", keep="0")
    entries = queue.audit_log()
    assert all(e["by"] == by for e in entries)
    actions = [e["action"] for e in reversed(entries)]
    assert actions[:5] == ["retry", "retry", "promote", "remove", "pause"]
    assert actions[5] == "resume" and actions[6].startswith("clean waiting")


def test_bulk_retry_remove_and_cancel_are_each_audited(dash: Dashboard, queue: Queue) -> None:
    browser = Client(dash)
    browser.post("/login", {"username": "dora", "password": TOKEN})
    token = csrf_of(browser)
    q, by = queue.name, "dashboard:dora (unverified)"
    first, second, third = (failing_job(queue, {"n": i}) for i in range(3))
    page = browser.get(f"/queues/{q}?state=failed").text
    assert f'form="bulk" name="ids" value="{first}"' in page and 'id="select-all"' in page
    assert ">Retry selected<" in page and ">Cancel selected<" not in page
    reply = browser.post(
        f"/queues/{q}/bulk",
        [
            ("csrf_token", token),
            ("state", "failed"),
            ("action", "retry"),
            ("ids", first),
            ("ids", second),
        ],
    )
    assert reply.status == 303 and reply.header("location") == f"/queues/{q}?state=failed"
    assert [queue.get_job(i).state for i in (first, second, third)] == [  # type: ignore[union-attr]
        "waiting",
        "waiting",
        "failed",
    ]
    for job_id in (first, second):
        assert queue.get_job(job_id).audit()[-1] == {  # type: ignore[union-attr]
            "at": pytest.approx(time.time(), abs=60),
            "by": by,
            "action": "retry",
        }
    # A script: ids as one comma-separated field; a job it cannot apply to is skipped.
    done = browser.post(
        f"/queues/{q}/bulk",
        {"action": "cancel", "ids": f"{first}, {third}"},
        x_csrf_token=token,
    ).json()
    assert done["result"] == {"done": [first], "skipped": [third]}
    assert done["message"] == "cancel: 1 of 2 job(s) (1 not in a state that allows it)"
    assert queue.get_job(first).state == "cancelled"  # type: ignore[union-attr]
    removed = browser.post(
        f"/queues/{q}/bulk", {"action": "remove", "ids": f"{first} {third}"}, x_csrf_token=token
    ).json()
    assert removed["result"]["done"] == [first, third]
    assert queue.get_job(first) is None and queue.get_job(third) is None
    actions = [(e["action"], e.get("job_id"), e["by"]) for e in reversed(queue.audit_log())]
    assert ("remove", third, by) in actions and ("cancel", first, by) in actions


def test_bulk_actions_are_refused_without_csrf_when_read_only_or_malformed(
    redis_url: str, user: Client, queue: Queue
) -> None:
    job_id = failing_job(queue)
    token = csrf_of(user)
    bulk = f"/queues/{queue.name}/bulk"
    assert user.post(bulk, {"action": "retry", "ids": job_id}).status == 403
    assert user.post(bulk, {"action": "explode", "ids": job_id}, x_csrf_token=token).status == 400
    assert user.post(bulk, {"action": "retry", "ids": " "}, x_csrf_token=token).status == 400
    too_many = ",".join(str(i) for i in range(501))
    assert user.post(bulk, {"action": "retry", "ids": too_many}, x_csrf_token=token).status == 400
    read_only = app(redis_url, token=TOKEN, queues=[queue.name], read_only=True)
    try:
        viewer = Client(read_only).bearer(TOKEN)
        page = viewer.get(f"/queues/{queue.name}?state=failed").text
        assert 'id="bulk"' not in page and 'name="ids"' not in page
        refused = viewer.post(bulk, {"action": "retry", "ids": job_id}, x_csrf_token=token)
        assert refused.status == 403
    finally:
        read_only.client.close()
    assert queue.get_job(job_id).state == "failed"  # type: ignore[union-attr]
    assert queue.audit_log() == []


def test_retry_all_failed_asks_first_without_javascript(dash: Dashboard, queue: Queue) -> None:
    browser = Client(dash)
    browser.post("/login", {"username": "eve", "password": TOKEN})
    token = csrf_of(browser)
    failed = [failing_job(queue) for _ in range(2)]
    listed = browser.get(f"/queues/{queue.name}?state=failed").text
    assert f'data-confirm="Retry all {{failed}} failed jobs of queue {queue.name}?"' in listed
    ask = browser.post(f"/queues/{queue.name}/retry-failed", {"csrf_token": token})
    assert ask.status == 200 and "2 failed job(s) go back to waiting" in ask.text
    assert 'name="confirm" value="yes"' in ask.text
    assert [queue.get_job(i).state for i in failed] == ["failed", "failed"]  # type: ignore[union-attr]
    done = browser.post(
        f"/queues/{queue.name}/retry-failed", {"csrf_token": token, "confirm": "yes"}
    )
    assert done.status == 303
    assert [queue.get_job(i).state for i in failed] == ["waiting", "waiting"]  # type: ignore[union-attr]
    assert {e["by"] for e in queue.audit_log()} == {"dashboard:eve (unverified)"}


def test_json_action_with_csrf_header(user: Client, queue: Queue) -> None:
    token = csrf_of(user)
    reply = user.post(f"/queues/{queue.name}/pause", {}, x_csrf_token=token)
    assert reply.status == 200 and reply.json()["ok"] is True
    assert queue.audit_log()[0]["by"] == "dashboard:token"
    again = user.post(f"/queues/{queue.name}/jobs/nope/retry", {}, x_csrf_token=token)
    assert again.status == 409 and "cannot retry" in again.json()["error"]
    bad = user.post(f"/queues/{queue.name}/clean", {"state": "completed"}, x_csrf_token=token)
    assert bad.status == 400


# -- mounted in an application: its login decides ---------------------------------------
def test_an_open_dashboard_warns_at_start(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="sandboxq.dashboard"):
        app(redis_url).client.close()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "requires no authentication" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sandboxq.dashboard"):
        app(redis_url, token=TOKEN).client.close()
        app(redis_url, authenticate=lambda scope: None).client.close()
    assert not caplog.records


class HostLogin(AuthenticationBackend):
    """The host application's own login (a cookie naming the user, for the test)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        name = conn.cookies.get("host_session")
        return None if name is None else (AuthCredentials(["authenticated"]), SimpleUser(name))


def host_user(scope: Any) -> str | None:
    user = scope["user"]
    return str(user.username) if user.is_authenticated else None


async def host_user_async(scope: Any) -> str | None:
    return host_user(scope)


@pytest.mark.parametrize("authenticate", [host_user, host_user_async])
def test_mounted_with_authenticate_the_host_login_decides_and_is_audited(
    redis_url: str, queue: Queue, authenticate: Any
) -> None:
    queue.add("ok")
    dashboard = app(redis_url, queues=[queue.name], authenticate=authenticate)
    host = Starlette(
        routes=[Mount("/admin/queues", app=dashboard)],
        middleware=[Middleware(AuthenticationMiddleware, backend=HostLogin())],
    )
    try:
        stranger = Client(host)
        for path in ("/admin/queues/", "/admin/queues/api/queues"):
            reply = stranger.get(path)
            assert reply.status == 401 and 'type="password"' not in reply.text
        assert stranger.get("/admin/queues/login").status == 303
        # A guessed token is no way in: there is none.
        assert stranger.bearer("x" * 20).get("/admin/queues/api/queues").status == 401
        erin = Client(host, cookies={"host_session": "erin"})
        page = erin.get("/admin/queues/")
        assert page.status == 200 and "erin" in page.text
        assert 'src="/admin/queues/static/dashboard.js"' in page.text
        pause = f"/admin/queues/queues/{queue.name}/pause"
        assert erin.post(pause, {}).status == 403  # CSRF still
        reply = erin.post(pause, {}, x_csrf_token=_csrf_in(page.text))
        assert reply.status == 200, reply.text
        assert queue.audit_log()[0]["by"] == "dashboard:erin"
    finally:
        dashboard.client.close()


# -- serving ----------------------------------------------------------------------------
def test_auth_policy_of_the_server() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert check_auth("127.0.0.1", None, no_auth=True) is None
    assert check_auth("0.0.0.0", "tok", no_auth=False) is None
    assert "needs a token" in (check_auth("127.0.0.1", None, no_auth=False) or "")
    assert "not a loopback" in (check_auth("0.0.0.0", None, no_auth=True) or "")


def dashboard_cli(
    *args: str, redis_url: str = "", env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``sandboxq dashboard ARGS`` run to its end (a refusal to start, or
    ``hash-token``), in an environment of only ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "sandboxq", "dashboard", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SANDBOXQ_REDIS_URL": redis_url, **(env or {})},
        timeout=30,
        cwd=ROOT,
    )


def test_cli_refuses_non_loopback_without_auth(redis_url: str) -> None:
    for args in (["--host", "0.0.0.0", "--no-auth"], ["--host", "0.0.0.0"]):
        done = dashboard_cli(*args, "--port", "1", redis_url=redis_url)
        assert done.returncode == 2, done.stderr
        assert "SANDBOXQ_DASHBOARD_TOKEN" in done.stderr


def test_a_short_token_is_refused_at_start(redis_url: str) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        app(redis_url, token="short")
    for args, env in ((["--token", "short"], {}), ([], {TOKEN_ENV: "x" * 15})):
        done = dashboard_cli(*args, "--port", "1", redis_url=redis_url, env=env)
        assert done.returncode == 2, done.stderr
        assert "at least 16" in done.stderr and "Traceback" not in done.stderr


def test_redis_down_is_a_503_not_a_crash() -> None:
    application = app("redis://127.0.0.1:1/0", token=TOKEN)
    reply = Client(application).bearer(TOKEN).get("/api/queues")
    assert reply.status == 503 and "cannot reach Redis" in reply.json()["error"]


# -- bad input is a 400/403, never a 500 -----------------------------------------------
@pytest.mark.parametrize("where", ["header", "form"])
def test_a_non_ascii_csrf_token_is_a_403(user: Client, queue: Queue, where: str) -> None:
    path = f"/queues/{queue.name}/pause"
    if where == "header":
        reply = user.post(path, {}, x_csrf_token="jeton-é")
    else:
        reply = user.post(path, {"csrf_token": "jeton-é"})
    assert reply.status == 403, reply.text
    assert not queue.is_paused()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keep", "1e400"),
        ("keep", "nan"),
        ("keep", "-1"),
        ("keep", "1.5"),
        ("keep", "1e300"),
        ("older_than", "inf"),
        ("older_than", "nan"),
        ("older_than", "1e300"),
        ("older_than", "soon"),
    ],
)
def test_clean_with_a_bad_number_is_a_400(
    user: Client, queue: Queue, field: str, value: str
) -> None:
    queue.add("ok")
    token = csrf_of(user)
    state = "completed" if field == "older_than" else "waiting"
    reply = user.post(
        f"/queues/{queue.name}/clean", {"state": state, field: value}, x_csrf_token=token
    )
    assert reply.status == 400, reply.text
    assert field in reply.json()["error"]
    assert queue.counts()["waiting"] == 1


def test_a_non_ascii_basic_auth_header_is_a_401(dash: Dashboard) -> None:
    reply = Client(dash, headers={"authorization": "Basic é"}).get("/api/queues")
    assert reply.status == 401


# -- DNS rebinding: the Host allow-list ----------------------------------------------------
def _csrf_in(text: str) -> str:
    found = re.search(r'name="sandboxq-csrf" content="([^"]+)"', text)
    assert found is not None, text
    return found[1]


def test_dns_rebinding_is_refused_by_the_default_host_allow_list(
    redis_url: str, queue: Queue
) -> None:
    """A page on evil.example whose name now resolves to 127.0.0.1 sends
    ``Host: evil.example:PORT``: it must not read the CSRF token, nor clean."""
    queue.add("ok")
    queue.add("ok")
    with DashboardServer(redis_url, ["--no-auth"]) as server:
        evil = f"evil.example:{server.port}"
        page = server.request("GET", "/", host=evil)
        assert page.status == 400 and "sandboxq-csrf" not in page.text
        # The token read through the real name, replayed by the rebound page:
        token = _csrf_in(server.request("GET", "/").text)
        attack = server.request(
            "POST",
            f"/queues/{queue.name}/clean",
            host=evil,
            form={"csrf_token": token, "state": "waiting", "keep": "0"},
            headers={"Origin": f"http://{evil}"},
        )
        assert attack.status == 400, attack.text
        assert queue.counts()["waiting"] == 2
        for name in ("127.0.0.1", "localhost", "LOCALHOST.", "[::1]"):
            assert server.request("GET", "/", host=f"{name}:{server.port}").status == 200, name
        assert server.request("GET", "/", host="").status == 400


def test_allowed_hosts_are_added_by_flag(redis_url: str, queue: Queue) -> None:
    args = ["--no-auth", "--allowed-host", "queues.example", "--allowed-host", "q2.example"]
    with DashboardServer(redis_url, args) as server:
        for host in ("queues.example", f"q2.example:{server.port}", f"localhost:{server.port}"):
            assert server.request("GET", "/api/queues", host=host).status == 200, host
        assert server.request("GET", "/api/queues", host="evil.example").status == 400


def test_binding_every_address_needs_allowed_hosts(redis_url: str) -> None:
    done = dashboard_cli(
        "--host", "0.0.0.0", "--port", "1", redis_url=redis_url, env={TOKEN_ENV: TOKEN}
    )
    assert done.returncode == 2 and "--allowed-host" in done.stderr, done.stderr
    assert allowed_hosts("0.0.0.0", ["q.example"]) == [*LOOPBACK_NAMES, "0.0.0.0", "q.example"]
    assert allowed_hosts("10.1.2.3", None) == [*LOOPBACK_NAMES, "10.1.2.3"]


def test_the_app_checks_host_before_anything_else(redis_url: str, queue: Queue) -> None:
    application = app(redis_url, token=TOKEN, allowed_hosts=["queues.example"])
    try:
        wrong = Client(application).bearer(TOKEN)
        for reply in (wrong.get("/"), wrong.get("/login"), wrong.post("/login", {})):
            assert reply.status == 400 and "not allowed" in reply.text
        assert wrong.get("/api/queues", host="Queues.Example:443").status == 200
        anyone = app(redis_url, token=TOKEN, allowed_hosts=["*"])
        assert Client(anyone).bearer(TOKEN).get("/api/queues").status == 200
        anyone.client.close()
        with pytest.raises(ValueError, match="empty"):
            app(redis_url, token=TOKEN, allowed_hosts=[])
    finally:
        application.client.close()
