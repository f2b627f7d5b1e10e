"""``sandboxq.direct``: the producer's commands, past redis-py's client layer.

Each test gives its client a name of its own, so Redis's CLIENT LIST tells
its connections apart from every other test's: a connection blocked in
BLPOP is how a test knows a command is under way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from threading import Thread
from typing import Any

import pytest
import redis
import redis.asyncio

from sandboxq import Queue
from sandboxq.direct import execute, execute_async
from tests.topologies import SentinelSet

pytestmark = pytest.mark.timeout(60)


class Interrupted(Exception):
    """Raised by a signal handler while a command waits for its reply."""


@pytest.fixture
def name() -> str:
    return f"direct-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(redis_url: str, name: str) -> Iterator[redis.Redis]:
    """A blocking client whose connections carry the test's name (this
    module's, in place of the suite's ``client``)."""
    conn = redis.Redis.from_url(redis_url, client_name=name)
    yield conn
    conn.close()


@pytest.fixture
def observer(redis_url: str) -> Iterator[redis.Redis]:
    """Another client: it reads CLIENT LIST and pushes what unblocks a BLPOP."""
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


def connections(observer: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [c for c in observer.client_list() if c.get("name") == name]


def blocked(observer: redis.Redis, name: str) -> bool:
    """Whether a connection named ``name`` is blocked in BLPOP."""
    return any(c["cmd"] == "blpop" for c in connections(observer, name))


def wait_until_blocked(observer: redis.Redis, name: str, *, is_blocked: bool = True) -> None:
    """Until a connection named ``name`` is (or, with ``is_blocked=False``,
    no longer is) blocked in BLPOP; 10 s at most."""
    deadline = time.monotonic() + 10
    while blocked(observer, name) != is_blocked:
        assert time.monotonic() < deadline, f"{name}: still {'not ' * is_blocked}in BLPOP"
        time.sleep(0.005)


def test_a_command_interrupted_while_waiting_leaves_no_reply_for_the_next(
    client: redis.Redis, observer: redis.Redis, name: str
) -> None:
    # Given a client whose command is blocked in a BLPOP, and a
    # signal that interrupts it once Redis shows it blocked
    key = f"{name}:list"

    def interrupt(_signum: int, _frame: Any) -> None:
        wait_until_blocked(observer, name)
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            execute(client, ("BLPOP", key, "20"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # Then the BLPOP went with its connection, which Redis sees closed
    wait_until_blocked(observer, name, is_blocked=False)
    # And once a value is pushed that the BLPOP would have taken, the next
    # command reads its own reply
    observer.lpush(key, "v")
    assert execute(client, ("LLEN", key)) == 1
    observer.delete(key)


def test_a_thread_runs_a_command_while_another_waits_for_its_reply(
    client: redis.Redis, observer: redis.Redis, name: str
) -> None:
    # Given one thread whose command waits for its reply (BLPOP)
    key = f"{name}:list"
    popped: list[Any] = []
    blocked = Thread(target=lambda: popped.append(execute(client, ("BLPOP", key, "20"))))
    blocked.start()
    wait_until_blocked(observer, name)
    # When another thread runs a command on the same client
    # Then it gets its own reply at once, while the first still waits
    assert execute(client, ("PING",)) == b"PONG"
    assert blocked.is_alive()
    # And the first gets its reply once the value arrives
    observer.lpush(key, "v")
    blocked.join(timeout=10)
    assert popped == [[key.encode(), b"v"]]


def test_a_forked_childs_replies_are_its_own(
    client: redis.Redis, observer: redis.Redis, name: str
) -> None:
    # Given a client that has a connection already
    key = f"{name}:key"
    assert execute(client, ("PING",)) == b"PONG"
    # When a forked child runs commands on the same client object
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if each reply is its own
        try:
            ok = execute(client, ("SET", key, "from-child")) == b"OK"
            ok = ok and execute(client, ("GET", key)) == b"from-child"
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    # Then the child's replies were its own, and so are the parent's after
    assert os.waitstatus_to_exitcode(status) == 0
    assert execute(client, ("GET", key)) == b"from-child"
    assert execute(client, ("PING",)) == b"PONG"
    observer.delete(key)


def test_closing_the_client_closes_the_connections_adds_used(
    redis_url: str, observer: redis.Redis, name: str
) -> None:
    # Given a queue whose client ran an add
    client = redis.Redis.from_url(redis_url, client_name=name)
    queue = Queue(f"t-{name}", connection=client)
    queue.add("x", {"n": 1})
    assert connections(observer, name)
    # When the client is closed
    queue.obliterate(force=True)
    client.close()
    # Then Redis sees none of its connections any more
    deadline = time.monotonic() + 10
    while connections(observer, name):
        assert time.monotonic() < deadline, "a connection of the closed client is still open"
        time.sleep(0.005)


def test_an_async_command_cancelled_while_waiting_leaves_no_reply_for_the_next(
    redis_url: str, observer: redis.Redis, name: str
) -> None:
    key = f"{name}:list"

    async def scenario() -> Any:
        # Given an asyncio client whose command is blocked in a BLPOP
        client = redis.asyncio.Redis.from_url(redis_url, client_name=name)
        waiting = asyncio.create_task(execute_async(client, ("BLPOP", key, "20")))
        await asyncio.to_thread(wait_until_blocked, observer, name)
        # When the command is cancelled
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # Then the BLPOP went with its connection, which Redis sees closed
        await asyncio.to_thread(wait_until_blocked, observer, name, is_blocked=False)
        # And once a value is pushed that the BLPOP would have taken, the
        # next command reads its own reply
        observer.lpush(key, "v")
        length = await execute_async(client, ("LLEN", key))
        await client.aclose()
        return length

    assert asyncio.run(scenario()) == 1
    observer.delete(key)


def test_an_async_command_runs_while_another_waits_for_its_reply(
    redis_url: str, observer: redis.Redis, name: str
) -> None:
    key = f"{name}:list"

    async def scenario() -> tuple[Any, Any]:
        # Given a coroutine whose command waits for its reply (BLPOP)
        client = redis.asyncio.Redis.from_url(redis_url, client_name=name)
        waiting = asyncio.create_task(execute_async(client, ("BLPOP", key, "20")))
        await asyncio.to_thread(wait_until_blocked, observer, name)
        # When another coroutine runs a command on the same client
        pong = await execute_async(client, ("PING",))
        # Then it gets its reply while the first still waits
        assert not waiting.done()
        observer.lpush(key, "v")
        popped = await waiting
        await client.aclose()
        return pong, popped

    assert asyncio.run(scenario()) == (b"PONG", [key.encode(), b"v"])


def test_a_wait_through_the_client_counts_the_add_before_it(sentinel_set: SentinelSet) -> None:
    # Given a plain client of a master whose replica is stopped (SIGSTOP),
    # so that it acknowledges nothing, and a queue on that client
    master, replica = sentinel_set.servers
    assert replica.process is not None
    client = redis.Redis(host=master.host, port=master.port)
    queue = Queue(f"t-wait-{uuid.uuid4().hex[:8]}", connection=client)
    queue.add("x")  # connected, scripts loaded
    # (and the replica has acknowledged everything so far)
    assert client.execute_command("WAIT", 1, 5000) == 1
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        # When a producer adds a job, then sends WAIT through the client
        # (docs/deploy.md: how to know a replica has the add)
        queue.add("x", {"n": 1})
        acknowledged = client.execute_command("WAIT", 1, 300)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    # Then WAIT ran on the add's connection and counted its writes, which no
    # replica has (on a connection that last wrote before the add, it would
    # count that connection's writes alone, acknowledged already, and say 1)
    assert acknowledged == 0
    queue.obliterate(force=True)
    client.close()
