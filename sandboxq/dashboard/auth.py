"""Who is asking: a session cookie from the login form, a bearer token or a
basic-auth password; and the CSRF token every POST must carry.

A session lives in Redis (``sessions.py``): the cookie is a random id, the
session expires after its TTL and logout deletes it. Its CSRF token is
random and stored with it. Callers without a session get a CSRF token
derived from a secret kept in Redis and who they are; either way a page of
another origin can neither read nor guess it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from sandboxq.dashboard.sessions import Sessions, Throttle, csrf_secret, derive

SESSION_COOKIE = "sandboxq_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: The shortest token accepted: a guessable token would make the rest moot.
MIN_TOKEN_LENGTH = 16
#: How long a login session lasts unless told otherwise.
DEFAULT_SESSION_TTL = 12 * 3600.0


class Throttled(Exception):
    """Too many failed logins from this client: it must wait ``wait`` s."""

    def __init__(self, wait: int) -> None:
        super().__init__(f"too many failed logins; try again in {wait} s")
        self.wait = wait


@dataclass(frozen=True)
class Identity:
    user: str  # as shown, and audited as "dashboard:<user>"
    csrf: str  # the CSRF token this caller's POSTs must carry


class Auth:
    """``token=None``: no authentication (everyone is ``anonymous``)."""

    def __init__(
        self, token: str | None, client: Any, session_ttl: float = DEFAULT_SESSION_TTL
    ) -> None:
        self.token = token or None
        if self.token is not None:
            check_token(self.token)
        self.client = client
        self.sessions = Sessions(client, session_ttl)
        self.throttle = Throttle(client)
        # Sessions opened with another token (before a rotation) are void.
        seed = (self.token or "").encode()
        self.credential = hashlib.sha256(b"sandboxq-dashboard:" + seed).hexdigest()[:8]

    @property
    def required(self) -> bool:
        return self.token is not None

    def _token_ok(self, given: str) -> bool:
        return self.token is not None and _same(given, self.token)

    def _stateless(self, user: str) -> Identity:
        """A caller without a session: its CSRF token is derived."""
        return Identity(user, derive(csrf_secret(self.client), "csrf:" + user))

    # -- identifying --------------------------------------------------------------
    def identify(
        self, headers: dict[str, str], cookies: dict[str, str], address: str
    ) -> Identity | None:
        """The caller, or None if authentication is required and missing or
        wrong. Wrong credentials count as a failed login of ``address``;
        Throttled once it made too many."""
        session = self.sessions.find(cookies.get(SESSION_COOKIE, ""))
        if session is not None and session.credential == self.credential:
            return Identity(session.user, session.csrf)
        if not self.required:
            return self._stateless("anonymous")
        authorization = headers.get("authorization")
        if authorization is None:
            return None
        self._check_throttle(address)
        found = self._from_header(authorization)
        if found is None:
            self.throttle.failed(address)
        return found

    def _from_header(self, authorization: str) -> Identity | None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and self._token_ok(value.strip()):
            return self._stateless("token")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8
                return None
            if self._token_ok(password):
                return self._stateless(clean_user(user) or "basic")
        return None

    def login(self, user: str, password: str, address: str) -> str | None:
        """A session cookie for a user who gave the right token, else None
        (a failed login of ``address``); Throttled after too many."""
        self._check_throttle(address)
        if not self._token_ok(password):
            self.throttle.failed(address)
            return None
        return self.sessions.open(clean_user(user) or "admin", self.credential)

    def _check_throttle(self, address: str) -> None:
        wait = self.throttle.wait(address)
        if wait:
            raise Throttled(wait)

    def logout(self, cookie: str) -> None:
        self.sessions.close(cookie)

    # -- CSRF ---------------------------------------------------------------------
    @staticmethod
    def csrf_ok(identity: Identity, given: str) -> bool:
        return bool(given) and _same(given, identity.csrf)


def check_token(token: str) -> str:
    """``token``, or ValueError if it is too short to be a secret."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the dashboard token must be at least {MIN_TOKEN_LENGTH} characters long, "
            f"not {len(token)} (make one with: python -c "
            "'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return token


def clean_user(user: str) -> str:
    """A user name safe for the audit log: printable, no colons, short."""
    return "".join(c for c in user if c.isprintable() and c not in ":\r\n")[:64].strip()


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison that takes any text: ``compare_digest``
    raises TypeError on non-ASCII ``str``, so compare the UTF-8 bytes."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())
