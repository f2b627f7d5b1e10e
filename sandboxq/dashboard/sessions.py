"""What the dashboard keeps in Redis, so that several dashboard processes
(uvicorn workers, restarts) agree on it. Every key is under ``sq:dashboard:``,
outside any queue's hash tag (``sq:{q}:``), so no queue listing sees them:

``sq:dashboard:session:<SHA-256 of the cookie>``
    One login session (JSON: who, its CSRF token, which credential opened
    it), set to expire after the session TTL; logout deletes it. The cookie
    itself is stored nowhere, so reading Redis gives no session away.
``sq:dashboard:failures:<client address>``
    Failed logins (form, bearer or basic) from one client: a counter that
    expires a minute after the first. At five, the client waits that out.
``sq:dashboard:secret``
    A random key, made once, that the CSRF tokens of callers without a
    session (bearer, basic auth, no auth) are derived from.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

PREFIX = "sq:dashboard:"
SECRET_KEY = PREFIX + "secret"
#: The longest session a dashboard may grant.
MAX_SESSION_TTL = 366 * 86400.0
#: Failed logins one client may make within ``FAILURE_WINDOW`` seconds.
MAX_FAILURES = 5
FAILURE_WINDOW = 60
#: Count a failure; the first starts the window (and a counter that somehow
#: lost its expiry gets one back, so no client is locked out for good).
_COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
"""
#: What a session cookie looks like (``secrets.token_urlsafe(32)``); anything
#: else is not looked up.
_COOKIE = re.compile(r"[A-Za-z0-9_-]{32,64}")


@dataclass(frozen=True)
class Session:
    user: str  # who, as shown and audited
    csrf: str  # the CSRF token of this session's POSTs
    credential: str  # a fingerprint of the credential it was opened with


class Sessions:
    """Login sessions in Redis: random ids, a TTL, revocable."""

    def __init__(self, client: Any, ttl: float) -> None:
        if not 0 < ttl <= MAX_SESSION_TTL:  # NaN fails this too
            raise ValueError(
                f"session_ttl must be over 0 and at most {MAX_SESSION_TTL:.0f} seconds "
                f"(366 days), not {ttl!r}"
            )
        self.client = client
        self.ttl = ttl

    @staticmethod
    def key(cookie: str) -> str:
        return PREFIX + "session:" + hashlib.sha256(cookie.encode()).hexdigest()

    def open(self, user: str, credential: str) -> str:
        """A new session for ``user``; its cookie value."""
        cookie = secrets.token_urlsafe(32)
        value = {"user": user, "csrf": secrets.token_urlsafe(32), "credential": credential}
        self.client.set(self.key(cookie), orjson.dumps(value), px=max(1, round(self.ttl * 1000)))
        return cookie

    def find(self, cookie: str) -> Session | None:
        if not _COOKIE.fullmatch(cookie):
            return None
        raw = self.client.get(self.key(cookie))
        if raw is None:
            return None
        try:
            found = orjson.loads(raw)
            return Session(str(found["user"]), str(found["csrf"]), str(found["credential"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    def close(self, cookie: str) -> None:
        if _COOKIE.fullmatch(cookie):
            self.client.delete(self.key(cookie))


class Throttle:
    """Failed logins per client address, across every dashboard process."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._count = client.register_script(_COUNT_FAILURE)

    @staticmethod
    def key(address: str) -> str:
        return PREFIX + "failures:" + address

    def wait(self, address: str) -> int:
        """Seconds before ``address`` may try again; 0: it may now."""
        key = self.key(address)
        count = self.client.get(key)
        if count is None or int(count) < MAX_FAILURES:
            return 0
        return max(1, math.ceil(int(self.client.pttl(key)) / 1000))

    def failed(self, address: str) -> None:
        self._count(keys=[self.key(address)], args=[FAILURE_WINDOW])


def csrf_secret(client: Any) -> bytes:
    """The shared key of the session-less CSRF tokens, made on first use."""
    found = client.get(SECRET_KEY)
    if found is None:
        client.set(SECRET_KEY, secrets.token_hex(32), nx=True)
        found = client.get(SECRET_KEY)
    return bytes(found)


def derive(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()
