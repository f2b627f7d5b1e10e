"""Redis connections: where the URL comes from, and errors that name it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.connection import parse_url

from sandboxq import addresses
from sandboxq.errors import ConnectionFailed

DEFAULT_URL = "redis://localhost:6379/0"

F = TypeVar("F", bound=Callable[..., Any])


def resolve_url(url: str | None) -> str:
    """The argument, else ``$SANDBOXQ_REDIS_URL``, else the local default."""
    return url or os.environ.get("SANDBOXQ_REDIS_URL") or DEFAULT_URL


def check_url(url: str) -> str:
    """``url``, once it reads as a Redis URL of a kind :mod:`sandboxq.addresses`
    knows; else a ValueError naming it (and no client is made)."""
    if addresses.parse(url).kind == "server":
        try:
            parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {addresses.redact(url)!r}: {exc}") from None
    return url


def connect(url: str, **options: Any) -> Any:
    """A client for ``url`` (any kind :mod:`sandboxq.addresses` reads) that
    returns bytes, so payloads stay binary-exact; ``options`` go to redis-py
    (e.g. ``socket_timeout``). One server gives a ``redis.Redis``, a cluster
    a ``redis.cluster.RedisCluster``, and Sentinel a ``redis.Redis`` whose
    pool asks the sentinels where the master is whenever it connects."""
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    return _client(url, options, redis.Redis, RedisCluster, ClusterNode, Sentinel)


def connect_async(url: str, **options: Any) -> Any:
    """What :func:`connect` gives, as its ``redis.asyncio`` twin."""
    import redis.asyncio
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.sentinel import Sentinel

    return _client(url, options, redis.asyncio.Redis, RedisCluster, ClusterNode, Sentinel)


def _client(
    url: str,
    options: dict[str, Any],
    single: Any,
    cluster: Any,
    cluster_node: Any,
    sentinel: Any,
) -> Any:
    """A client for ``url`` made of the given redis-py classes (blocking or
    asyncio: they take the same arguments)."""
    address = addresses.parse(url)
    tls: dict[str, Any] = dict(address.tls_options)
    if address.kind == "cluster":
        return cluster(
            startup_nodes=[cluster_node(host, port) for host, port in address.nodes],
            username=address.username,
            password=address.password,
            ssl=address.tls,
            decode_responses=False,
            health_check_interval=30,
            **tls,
            **options,
        )
    if address.kind == "sentinel":
        timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
        sentinels = sentinel(
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
        return sentinels.master_for(
            address.service, decode_responses=False, health_check_interval=30, **options
        )
    try:
        return single.from_url(url, decode_responses=False, health_check_interval=30, **options)
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {addresses.redact(url)!r}: {exc}") from None


def describe(client: Any) -> str:
    """A URL-like description of where ``client`` connects, for messages."""
    if hasattr(client, "get_primaries"):  # a cluster client, blocking or asyncio
        # An asyncio cluster client knows only its seeds until its first command.
        known = client.get_primaries() or client.nodes_manager.startup_nodes.values()
        nodes = ",".join(f"{node.host}:{node.port}" for node in known)
        return f"redis+cluster://{nodes}"
    pool = client.connection_pool
    if hasattr(pool, "sentinel_manager"):  # a Sentinel master_for() client
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
        raise unreachable(url, exc) from exc


def unreachable(url: str, exc: Exception) -> ConnectionFailed:
    return ConnectionFailed(f"cannot reach Redis at {addresses.redact(url)}: {exc}")
