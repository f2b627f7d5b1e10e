"""Redis connections: where the URL comes from, and errors that name it."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import hiredis
import redis

from sandboxq import addresses
from sandboxq.errors import ConnectionFailed

DEFAULT_URL = "redis://localhost:6379/0"

F = TypeVar("F", bound=Callable[..., Any])


def resolve_url(url: str | None) -> str:
    """The argument, else ``$SANDBOXQ_REDIS_URL``, else the local default."""
    return url or os.environ.get("SANDBOXQ_REDIS_URL") or DEFAULT_URL


def connect(url: str, **options: Any) -> Any:
    """A client for ``url`` (any kind :mod:`sandboxq.addresses` reads) that
    returns bytes, so payloads stay binary-exact; ``options`` go to redis-py
    (e.g. ``socket_timeout``). One server gives a ``redis.Redis``, a cluster
    a ``redis.cluster.RedisCluster``, and Sentinel a ``redis.Redis`` whose
    pool asks the sentinels where the master is whenever it connects."""
    address = addresses.parse(url)
    if address.kind == "cluster":
        return _cluster_client(address, options)
    if address.kind == "sentinel":
        return _sentinel_client(address, options)
    try:
        return redis.Redis.from_url(
            url, decode_responses=False, health_check_interval=30, **options
        )
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {addresses.redact(url)!r}: {exc}") from None


def _cluster_client(address: addresses.Address, options: dict[str, Any]) -> Any:
    from redis.cluster import ClusterNode, RedisCluster

    tls: dict[str, Any] = dict(address.tls_options)
    return RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in address.nodes
        ],
        username=address.username,
        password=address.password,
        ssl=address.tls,
        decode_responses=False,
        health_check_interval=30,
        **tls,
        **options,
    )


def _sentinel_client(address: addresses.Address, options: dict[str, Any]) -> Any:
    from redis.sentinel import Sentinel

    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    tls: dict[str, Any] = dict(address.tls_options)
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(address.nodes),
        sentinel_kwargs={
            "username": address.sentinel_username,
            "password": address.sentinel_password,
            "ssl": address.tls,
            **tls,
            **timeouts,
        },
        username=address.username,
        password=address.password,
        ssl=address.tls,
        db=address.db,
        **tls,
    )
    return sentinels.master_for(  # type: ignore[no-untyped-call]
        address.service,
        decode_responses=False,
        health_check_interval=30,
        **options,
    )


def execute(client: redis.Redis, args: tuple[Any, ...]) -> Any:
    """Run one command (str, bytes and int arguments) and return its raw reply.

    On a plain ``redis.Redis`` this takes a connection from the client's pool
    and writes the packed command itself, skipping redis-py's client layer
    (argument checks, observability hooks, response callbacks): on the
    development box that layer costs about as much CPU as the round trip, and
    a producer's ``add`` is one command. What matters stays redis-py's: the
    pool, connecting (AUTH, SELECT, TLS), health checks, the client's retry
    policy, and error replies raised as the same exceptions. Other clients
    (a single-connection client, a cluster client) go the usual way.
    """
    if type(client) is not redis.Redis or client.connection is not None:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    packed = [hiredis.pack_command(args)]
    pool = client.connection_pool
    conn = pool.get_connection()

    def round_trip() -> Any:
        conn.send_packed_command(packed)  # type: ignore[no-untyped-call]
        return conn.read_response()

    try:
        disconnect = conn.disconnect  # on a failure, before a retry reconnects
        return conn.retry.call_with_retry(round_trip, lambda _error: disconnect())  # type: ignore[no-untyped-call]
    finally:
        pool.release(conn)


def describe(client: Any) -> str:
    """A URL-like description of where ``client`` connects, for messages."""
    from redis.cluster import RedisCluster
    from redis.sentinel import SentinelConnectionPool

    if isinstance(client, RedisCluster):
        nodes = ",".join(f"{node.host}:{node.port}" for node in client.get_primaries())  # type: ignore[no-untyped-call]
        return f"redis+cluster://{nodes}"
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        sentinels = ",".join(
            f"{s.connection_pool.connection_kwargs.get('host')}:"
            f"{s.connection_pool.connection_kwargs.get('port')}"
            for s in pool.sentinel_manager.sentinels
        )
        db = pool.connection_kwargs.get("db", 0)
        return f"redis+sentinel://{sentinels}/{pool.service_name}/{db}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return (
        f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/"
        f"{kwargs.get('db', 0)}"
    )


@contextmanager
def url_in_errors(url: str) -> Iterator[None]:
    """Turn a Redis connection error into a ConnectionFailed naming ``url``."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise _unreachable(url, exc) from exc


def _unreachable(url: str, exc: Exception) -> ConnectionFailed:
    return ConnectionFailed(f"cannot reach Redis at {addresses.redact(url)}: {exc}")


def names_url(method: F) -> F:
    """Decorate a method of an object with a ``url`` attribute so Redis
    connection errors inside it name that URL."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        # What url_in_errors does, inline: this wraps every producer call,
        # and a generator-based context manager costs a few microseconds.
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _unreachable(self.url, exc) from exc

    return wrapper  # type: ignore[return-value]
