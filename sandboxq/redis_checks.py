"""Checks of the Redis server a worker is about to trust with jobs."""

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


def check_server(client: Any) -> list[str]:
    """Refuse a Redis older than 6.2; return warnings about settings that can
    lose jobs (an eviction policy other than noeviction, no persistence).
    Managed services that disable CONFIG get a note instead of a check."""
    version = str(client.info("server").get("redis_version", "0"))
    require_version(version)
    config: dict[str, str] = {}
    try:
        for name in RISKY_SETTINGS:
            config.update({_text(k): _text(v) for k, v in client.config_get(name).items()})
    except redis.ResponseError:
        return judge_server(version, None)
    return judge_server(version, config)


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
