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


def check_server(client: Any) -> list[str]:
    """Refuse a Redis older than 6.2; return warnings about settings that can
    lose jobs (an eviction policy other than noeviction, no persistence).
    Managed services that disable CONFIG get a note instead of a check."""
    version = client.info("server").get("redis_version", "0")
    if parse_version(str(version)) < MIN_VERSION:
        raise UnsupportedRedis(
            f"Redis {version} is too old: sandboxq needs Redis >= {'.'.join(map(str, MIN_VERSION))}"
        )
    try:
        config = {
            **client.config_get("maxmemory-policy"),
            **client.config_get("appendonly"),
            **client.config_get("save"),
        }
    except redis.ResponseError:
        return [
            "cannot read the Redis config (CONFIG is disabled): make sure "
            "maxmemory-policy is noeviction and persistence is on"
        ]
    warnings = []
    decoded = {_text(k): _text(v) for k, v in config.items()}
    policy = decoded.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis "
            "will evict keys and lose jobs; set it to 'noeviction'"
        )
    if decoded.get("appendonly") != "yes" and not decoded.get("save"):
        warnings.append(
            "Redis persistence is off (no AOF, no RDB snapshots): a Redis "
            "restart loses every job; turn on appendonly (appendfsync everysec)"
        )
    return warnings


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
