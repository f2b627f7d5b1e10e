"""Named dashboard users: a file of ``name:hash`` lines, one per user, where
the hash is the user's token through scrypt (``hashlib``, no dependency):

    # sandboxq dashboard --users users.txt
    alice:scrypt$16384$8$1$<salt, hex>$<hash, hex>

``scrypt$N$r$p$salt$hash`` names its own costs, so stronger hashes can come
later without a change of format. ``sandboxq dashboard hash-token`` prints
the part after the colon.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The costs of new hashes (Django's scrypt defaults): ~60 ms, 16 MiB.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: What a hash read from a file may ask for: no weaker than the defaults, and
#: no dearer than 256 MiB, so a file cannot make every login exhaust memory.
MIN_N, MAX_MEMORY = 2**14, 256 * 2**20
#: A user name: what the audit log and the page header show.
USER_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_HASH = re.compile(r"scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([0-9a-f]{32,128})\$([0-9a-f]{64})")


@dataclass(frozen=True)
class TokenHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> TokenHash:
        found = _HASH.fullmatch(text.strip())
        if found is None:
            raise ValueError("not a token hash: expected scrypt$N$r$p$SALT$HASH (hex)")
        n, r, p = (int(found[i]) for i in (1, 2, 3))
        if n < MIN_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError(
                f"scrypt costs N={n} r={r} p={p} refused: N a power of two >= {MIN_N}, "
                "r from 1 to 32, p from 1 to 16"
            )
        if _memory(n, r, p) > MAX_MEMORY:
            raise ValueError(f"scrypt costs N={n} r={r} p={p} need over 256 MiB")
        return cls(n, r, p, bytes.fromhex(found[4]), bytes.fromhex(found[5]))

    def __str__(self) -> str:
        return f"scrypt${self.n}${self.r}${self.p}${self.salt.hex()}${self.digest.hex()}"

    def verify(self, token: str) -> bool:
        """Does ``token`` hash to this? Constant time in the digest."""
        return hmac.compare_digest(_scrypt(token, self.salt, self.n, self.r, self.p), self.digest)

    @property
    def fingerprint(self) -> str:
        """A short id of this hash: a session opened with it dies with it."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:16]


def hash_token(token: str) -> TokenHash:
    """A new salted hash of ``token`` (its length is the caller's to check)."""
    salt = secrets.token_bytes(16)
    return TokenHash(
        SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, _scrypt(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    )


def token_fingerprint(token: str) -> str:
    """A short, slow-to-guess id of a shared token, stored with the sessions
    opened with it: a session of an older token is void."""
    salt = b"sandboxq-dashboard-session"
    return _scrypt(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)[:8].hex()


def _memory(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2)


def _scrypt(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        token.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_memory(n, r, p) + 2**20,
        dklen=32,
    )


def parse_users(text: str, source: str = "users") -> dict[str, TokenHash]:
    """``name:hash`` lines (blank lines and ``#`` comments skipped); a
    ValueError naming ``source`` and the line for anything else."""
    users: dict[str, TokenHash] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, hashed = line.partition(":")
        where = f"{source}, line {number}"
        if not colon or not USER_NAME.fullmatch(name):
            raise ValueError(
                f"{where}: expected NAME:scrypt$... with NAME of letters, digits and ._@+- "
                "(at most 64)"
            )
        if name in users:
            raise ValueError(f"{where}: user {name!r} is named twice")
        try:
            users[name] = TokenHash.parse(hashed)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if not users:
        raise ValueError(f"{source} names no user")
    return users


def load_users(users: str | os.PathLike[str] | Mapping[str, str]) -> dict[str, TokenHash]:
    """The users of a file (its path) or of a mapping of name to hash."""
    if isinstance(users, Mapping):
        return parse_users("\n".join(f"{k}:{v}" for k, v in users.items()), "users")
    try:
        text = Path(users).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the users file {os.fspath(users)!r}: {exc}") from None
    return parse_users(text, os.fspath(users))
