"""Redis connections: where the URL comes from, and errors that name it."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis

from sandboxq.errors import ConnectionFailed

DEFAULT_URL = "redis://localhost:6379/0"

F = TypeVar("F", bound=Callable[..., Any])


def resolve_url(url: str | None) -> str:
    """The argument, else ``$SANDBOXQ_REDIS_URL``, else the local default."""
    return url or os.environ.get("SANDBOXQ_REDIS_URL") or DEFAULT_URL


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` that returns bytes (payloads stay binary-exact);
    ``options`` go to redis-py (e.g. ``socket_timeout``)."""
    try:
        return redis.Redis.from_url(
            url, decode_responses=False, health_check_interval=30, **options
        )
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {url!r}: {exc}") from None


def describe(client: redis.Redis) -> str:
    """A URL-like description of where ``client`` connects, for messages."""
    kwargs = client.connection_pool.connection_kwargs
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
        raise ConnectionFailed(f"cannot reach Redis at {url}: {exc}") from exc


def names_url(method: F) -> F:
    """Decorate a method of an object with a ``url`` attribute so Redis
    connection errors inside it name that URL."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with url_in_errors(self.url):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
