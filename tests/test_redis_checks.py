"""Redis safety checks at worker start."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from sandboxq import Queue
from sandboxq.redis_checks import UnsupportedRedis, check_server, parse_version
from tests.worker_harness import WorkerProcess


class OldRedis:
    """A stand-in reporting an old version: no Redis 6.0 binary is at hand."""

    def info(self, _section: str) -> dict[str, str]:
        return {"redis_version": "6.0.9"}


def test_a_redis_older_than_6_2_is_refused_with_a_clear_error() -> None:
    with pytest.raises(UnsupportedRedis, match=r"Redis 6\.0\.9 is too old: .*>= 6\.2"):
        check_server(OldRedis())
    assert parse_version("6.2.14") >= (6, 2) > parse_version("6.0.9")


def test_the_test_server_is_supported_but_has_no_persistence(client: redis.Redis) -> None:
    warnings = check_server(client)
    assert [w for w in warnings if "persistence is off" in w]
    assert not [w for w in warnings if "maxmemory-policy" in w]


def test_an_eviction_policy_is_warned_about_by_the_worker(
    client: redis.Redis, queue: Queue, start_worker: Callable[..., WorkerProcess]
) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        worker = start_worker(procs=1)
        line = worker.wait_for_line("maxmemory-policy", timeout=10).string
        assert "allkeys-lru" in line and "noeviction" in line
        assert worker.matching_lines("persistence is off")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
