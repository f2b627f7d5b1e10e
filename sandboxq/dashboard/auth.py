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
import functools
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandboxq.dashboard.sessions import Sessions, Throttle, csrf_secret, derive
from sandboxq.dashboard.users import TokenHash, hash_token, token_fingerprint

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
    session: bool = False  # logged in through the form (so it can log out)


class Auth:
    """One of: a shared ``token`` (anyone who has it is in, under the name
    they type, unverified); named ``users``, each with a token of their own
    (hashed), so the audit says who really acted; ``external``: the host
    application names the user (``identify``'s ``external_user``); none of
    these: no authentication (everyone is ``anonymous``)."""

    def __init__(
        self,
        token: str | None,
        client: Any,
        session_ttl: float = DEFAULT_SESSION_TTL,
        users: Mapping[str, TokenHash] | None = None,
        *,
        external: bool = False,
    ) -> None:
        self.token = token or None
        self.users = None if users is None else dict(users)
        if self.token is not None and self.users is not None:
            raise ValueError("the dashboard takes a shared token or named users, not both")
        if self.token is not None:
            check_token(self.token)
        self.external = external
        self.client = client
        self.sessions = Sessions(client, session_ttl)
        self.throttle = Throttle(client)
        # Sessions opened with another token (before a rotation) are void.
        # Through scrypt: what Redis holds must not make guessing it cheap.
        self.credential = "" if self.token is None else token_fingerprint(self.token)

    @property
    def tokens(self) -> bool:
        """Does it take tokens (login form, bearer, basic)?"""
        return self.token is not None or self.users is not None

    @property
    def required(self) -> bool:
        return self.tokens or self.external

    @property
    def named(self) -> bool:
        return self.users is not None

    def check(self, user: str, secret: str) -> str | None:
        """Who ``user`` and ``secret`` stand for, as shown and audited, or
        None. Named users: the user, if the secret is theirs. A shared
        token: the name typed, marked unverified (``token`` if none)."""
        if self.users is not None:
            found = self.users.get(user)
            if found is None:
                _decoy().verify(secret)  # an unknown name takes as long to refuse
                return None
            return user if found.verify(secret) else None
        if self.token is None or not _same(secret, self.token):
            return None
        name = clean_user(user)
        return f"{name} (unverified)" if name else "token"

    def credential_of(self, user: str) -> str | None:
        """What a session of ``user`` must have been opened with: the
        user's hash as it is now, or the shared token (its fingerprints)."""
        if self.users is None:
            return self.credential
        found = self.users.get(user)
        return None if found is None else found.fingerprint

    def _stateless(self, user: str) -> Identity:
        """A caller without a session: its CSRF token is derived."""
        return Identity(user, derive(csrf_secret(self.client), "csrf:" + user))

    # -- identifying --------------------------------------------------------------
    def identify(
        self,
        headers: dict[str, str],
        cookies: dict[str, str],
        address: str,
        external_user: str | None = None,
    ) -> Identity | None:
        """The caller, or None if authentication is required and missing or
        wrong. Wrong credentials count as a failed login of ``address``;
        Throttled once it made too many. ``external_user``: whom the host
        application logged in, if anyone."""
        session = self.sessions.find(cookies.get(SESSION_COOKIE, ""))
        if session is not None and session.credential == self.credential_of(session.user):
            return Identity(session.user, session.csrf, session=True)
        if self.external and external_user:
            return self._stateless(external_user)
        if not self.required:
            return self._stateless("anonymous")
        authorization = headers.get("authorization")
        if authorization is None or not self.tokens:
            return None
        self._check_throttle(address)
        user = self._from_header(authorization)
        if user is None:
            self.throttle.failed(address)
            return None
        return self._stateless(user)

    def _from_header(self, authorization: str) -> str | None:
        """``Bearer TOKEN`` (named users: ``Bearer NAME:TOKEN``) or basic
        auth ``NAME:TOKEN``: who it stands for, or None."""
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and not self.named:
            return self.check("", value)
        if scheme == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode()
            except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8
                return None
        elif scheme != "bearer":
            return None
        user, _, secret = value.partition(":")
        return self.check(user, secret)

    def login(self, user: str, password: str, address: str) -> str | None:
        """A session cookie for a user who gave the right token, else None
        (a failed login of ``address``); Throttled after too many."""
        self._check_throttle(address)
        who = self.check(user.strip(), password)
        credential = None if who is None else self.credential_of(who)
        if who is None or credential is None:
            self.throttle.failed(address)
            return None
        return self.sessions.open(who, credential)

    def logout(self, cookie: str) -> None:
        self.sessions.close(cookie)

    def _check_throttle(self, address: str) -> None:
        wait = self.throttle.wait(address)
        if wait:
            raise Throttled(wait)

    # -- CSRF ---------------------------------------------------------------------
    @staticmethod
    def csrf_ok(identity: Identity, given: str) -> bool:
        return bool(given) and _same(given, identity.csrf)


@functools.cache
def _decoy() -> TokenHash:
    return hash_token(secrets.token_urlsafe(16))


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
