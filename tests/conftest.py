"""Fixtures: one real redis-server per test session, a fresh queue per test,
and the two hot-path implementations."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
import redis

from sandboxq import Queue
from sandboxq.local_redis import LocalRedis
from tests.topologies import RedisClusterNodes, SentinelSet
from tests.worker_harness import WorkerProcess


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
