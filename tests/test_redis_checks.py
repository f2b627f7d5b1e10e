"""Redis safety checks at worker start, on each supported Redis version."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from sandboxq.local_redis import LocalRedis
from sandboxq.redis_checks import UnsupportedRedis, check_server, parse_version
from tests.faults import RedisVersion
from tests.worker_harness import READY, WorkerProcess


class OldRedis:
    """A stand-in reporting an old version: no Redis 6.0 binary is at hand."""

    def info(self, _section: str) -> dict[str, str]:
        return {"redis_version": "6.0.9"}


def test_a_redis_older_than_6_2_is_refused_with_a_clear_error() -> None:
    with pytest.raises(UnsupportedRedis, match=r"Redis 6\.0\.9 is too old: .*>= 6\.2"):
        check_server(OldRedis())
    assert parse_version("6.2.14") >= (6, 2) > parse_version("6.0.9")


@pytest.fixture
def own_client(fault_server: LocalRedis) -> Iterator[redis.Redis]:
    """A client of a server of the test's own, on each Redis version in turn."""
    client = redis.Redis.from_url(fault_server.url)
    yield client
    client.close()


def test_each_test_server_is_supported_but_has_no_persistence(
    own_client: redis.Redis, redis_version: RedisVersion
) -> None:
    # Given a test server of each version, writing nothing to disk
    assert own_client.info("server")["redis_version"] == redis_version.version
    # When a worker would check it
    warnings = check_server(own_client)
    # Then it is supported, and only its lack of persistence is warned about
    assert [w for w in warnings if "persistence is off" in w]
    assert not [w for w in warnings if "maxmemory-policy" in w]


def test_an_eviction_policy_is_warned_about_by_the_worker(
    own_client: redis.Redis,
    fault_server: LocalRedis,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # Given a server that evicts keys under memory pressure
    own_client.config_set("maxmemory-policy", "allkeys-lru")
    # When a worker starts on it
    worker = start_worker(procs=1, url=fault_server.url)
    # Then it warns about the policy, and about the lack of persistence
    line = worker.wait_for_line("maxmemory-policy", timeout=10).string
    assert "allkeys-lru" in line and "noeviction" in line
    worker.wait_for_line("persistence is off", timeout=10)


def test_a_server_with_config_disabled_gets_a_note_and_the_worker_runs(
    tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a server that refuses CONFIG, as managed services do
    with LocalRedis(tmp_path / "no-config", options=["--rename-command", "CONFIG", ""]) as server:
        client = redis.Redis.from_url(server.url)
        with pytest.raises(redis.ResponseError):
            client.config_get("save")
        # When the server is checked, and a worker starts on it
        warnings = check_server(client)
        worker = start_worker(procs=1, url=server.url, wait_ready=False)
        # Then both note that the config cannot be read, and the worker gets ready
        assert [w for w in warnings if "cannot read the Redis config" in w]
        worker.wait_for_line("cannot read the Redis config", timeout=10)
        worker.wait_for_line(READY, timeout=10)
        client.close()
