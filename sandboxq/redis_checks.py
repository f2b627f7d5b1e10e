"""Checks of the Redis server a worker is about to trust with jobs.

:class:`ServerCheck` is the check itself, fed one reply at a time: the
worker's broker sends its :meth:`~ServerCheck.commands` in its first round
and feeds it the raw replies; :func:`check_server` is the same check on a
blocking client (tests, tools).
"""

from __future__ import annotations

from typing import Any

import redis

from sandboxq.errors import SandboxqError

MIN_VERSION = (6, 2)


class UnsupportedRedis(SandboxqError):
    """The server is too old for sandboxq's scripts."""


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


#: The settings that can lose jobs, as CONFIG GET reads them.
RISKY_SETTINGS = ("maxmemory-policy", "appendonly", "save")


class ServerCheck:
    """The server's version (INFO) and risky settings (CONFIG GET), noted as
    their replies come, raw or as redis-py parsed them; then the verdict."""

    def __init__(self) -> None:
        self.version = "0"
        #: The settings read so far; None once CONFIG was refused (disabled,
        #: as on managed services): the verdict is then a note, not a check.
        self.config: dict[str, str] | None = {}
        self._config_replies = 0

    @staticmethod
    def commands() -> list[tuple[str, ...]]:
        """What to send: INFO, then one CONFIG GET per risky setting."""
        return [("INFO", "server"), *(("CONFIG", "GET", name) for name in RISKY_SETTINGS)]

    def note_info(self, reply: Any) -> None:
        """INFO server's reply: its text, or redis-py's dict of it."""
        if isinstance(reply, dict):
            self.version = str(reply.get("redis_version", "0"))
        else:
            self.version = info_field(reply, "redis_version") or "0"

    def note_config(self, reply: Any) -> None:
        """One CONFIG GET reply: name, value pairs (a flat list, or redis-py's
        dict), or the error of a refused CONFIG."""
        self._config_replies += 1
        if self.config is None:
            return
        if isinstance(reply, Exception):
            self.config = None
            return
        pairs = (
            reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
        )
        self.config.update((_text(name), _text(value)) for name, value in pairs)

    @property
    def complete(self) -> bool:
        """Every reply the verdict needs came (or CONFIG was refused)."""
        return self.config is None or self._config_replies >= len(RISKY_SETTINGS)

    def verdict(self) -> list[str]:
        """Raise UnsupportedRedis, or return the warnings (judge_server)."""
        return judge_server(self.version, self.config)


def check_server(client: Any) -> list[str]:
    """Refuse a Redis older than 6.2; return warnings about settings that can
    lose jobs (an eviction policy other than noeviction, no persistence).
    Managed services that disable CONFIG get a note instead of a check."""
    check = ServerCheck()
    check.note_info(client.info("server"))
    require_version(check.version)  # before CONFIG: an old server may lack it
    for name in RISKY_SETTINGS:
        try:
            check.note_config(client.config_get(name))
        except redis.ResponseError as exc:
            check.note_config(exc)
            break
    return check.verdict()


def require_version(version: str) -> None:
    """Raise UnsupportedRedis for a Redis older than 6.2."""
    if parse_version(version) < MIN_VERSION:
        raise UnsupportedRedis(
            f"Redis {version} is too old: sandboxq needs Redis >= {'.'.join(map(str, MIN_VERSION))}"
        )


def judge_server(version: str, config: dict[str, str] | None) -> list[str]:
    """What the server's version and settings (None: CONFIG is disabled) mean
    for a worker: raises UnsupportedRedis, or returns warnings."""
    require_version(version)
    if config is None:
        return [
            "cannot read the Redis config (CONFIG is disabled): make sure "
            "maxmemory-policy is noeviction and persistence is on"
        ]
    warnings = []
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis "
            "will evict keys and lose jobs; set it to 'noeviction'"
        )
    if config.get("appendonly") != "yes" and not config.get("save"):
        warnings.append(
            "Redis persistence is off (no AOF, no RDB snapshots): a Redis "
            "restart loses every job; turn on appendonly (appendfsync everysec)"
        )
    return warnings


def info_field(info: bytes | str, name: str) -> str | None:
    """One field of an INFO reply's text (``redis_version``, say)."""
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
