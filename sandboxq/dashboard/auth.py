"""Who is asking: a bearer token, the basic-auth password or a session cookie
from the login form; and the CSRF token every POST must carry.

The session cookie holds ``user:nonce:HMAC(secret, user:nonce)``, never the
token. The CSRF token is ``HMAC(secret, "csrf:" + user:nonce)``: bound to the
session, so a page of another origin can neither read nor guess it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "sandboxq_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: The shortest token accepted: a guessable token would make the rest moot.
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Identity:
    user: str
    session: str  # "user:nonce" of a cookie session, else "user:"


class Auth:
    """``token=None``: no authentication (everyone is ``anonymous``)."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None
        if self.token is not None:
            check_token(self.token)
        # With a token, sessions survive restarts; without, a random secret
        # still makes CSRF tokens unguessable.
        seed = self.token.encode() if self.token else secrets.token_bytes(32)
        self.secret = hashlib.sha256(b"sandboxq-dashboard:" + seed).digest()

    @property
    def required(self) -> bool:
        return self.token is not None

    def _mac(self, message: str) -> str:
        return hmac.new(self.secret, message.encode(), hashlib.sha256).hexdigest()

    def _token_ok(self, given: str) -> bool:
        return self.token is not None and _same(given, self.token)

    # -- identifying --------------------------------------------------------------
    def identify(self, headers: dict[str, str], cookies: dict[str, str]) -> Identity | None:
        """The caller, or None if authentication is required and missing/wrong."""
        session = self.check_session(cookies.get(SESSION_COOKIE, ""))
        if session is not None:
            return session
        if not self.required:
            return Identity("anonymous", "anonymous:")
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._token_ok(value.strip()):
            return Identity("token", "token:")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8
                return None
            if self._token_ok(password):
                user = clean_user(user) or "basic"
                return Identity(user, f"{user}:")
        return None

    def new_session(self, user: str) -> str:
        """A cookie value for a user who just logged in."""
        session = f"{clean_user(user) or 'admin'}:{secrets.token_hex(12)}"
        return f"{session}:{self._mac('session:' + session)}"

    def check_session(self, cookie: str) -> Identity | None:
        session, _, mac = cookie.rpartition(":")
        if not session or not _same(mac, self._mac("session:" + session)):
            return None
        return Identity(session.partition(":")[0], session)

    def login(self, password: str) -> bool:
        return self._token_ok(password)

    # -- CSRF ---------------------------------------------------------------------
    def csrf_token(self, identity: Identity) -> str:
        return self._mac("csrf:" + identity.session)

    def csrf_ok(self, identity: Identity, given: str) -> bool:
        return bool(given) and _same(given, self.csrf_token(identity))


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
