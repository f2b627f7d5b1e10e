"""Microbenchmarks of each hot-path function, native (``sandboxq._fast``) vs
pure (``sandboxq._fast_py``), on realistic inputs.

The inputs come from the real thing: jobs with typical options are added to
a private redis-server and leased with the fetch script once, so the job
hashes have the fields and encodings the package writes (JSON data and
backoff, millisecond times, counters, state and token). The functions are
then called directly; Redis is not involved in the timed part.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import redis

from sandboxq import Queue
from sandboxq.queue import MAX_PAYLOAD_BYTES
from sandboxq.scripts import now_ms

if TYPE_CHECKING:
    from conftest import Impl

#: Jobs per fetch batch handed to ``decode_fetched``.
BATCH = 50

SMALL_DATA = {"user_id": 48213, "template": "welcome", "to": "ada@example.com", "locale": "en"}


def realistic_job(n: int) -> dict[str, Any]:
    return {
        "name": "send_email",
        "data": {
            "user_id": 48213 + n,
            "template": "welcome",
            "to": f"user{n}@example.com",
            "context": {"first_name": "Ada", "plan": "pro", "items": [101, 102, 103]},
        },
        "priority": 5,
        "attempts": 3,
        "backoff": {"type": "exponential", "delay": 1.0, "jitter": 0.2, "max": 60},
        "timeout": 30,
        "keep_completed": {"count": 1000},
        "keep_failed": {"count": 5000, "age": 86_400},
    }


@dataclass(frozen=True)
class Inputs:
    rows: list[Any]  # fetch.lua's [id, [field, value, ...], ...] for BATCH jobs
    flat: list[bytes]  # one of those job hashes, as Lua returns it
    mapping: dict[bytes, bytes]  # the same job hash, as HGETALL returns it


@pytest.fixture(scope="module")
def inputs(redis_client: redis.Redis) -> Inputs:
    queue = Queue(f"bench-fast-{uuid.uuid4().hex[:10]}", connection=redis_client)
    try:
        queue.add_bulk(realistic_job(n) for n in range(BATCH))
        rows, _next_due = queue.scripts.fetch(queue.keys, now_ms(), BATCH, "bench-token", 60_000)
        assert len(rows) == 2 * BATCH
        mapping = redis_client.hgetall(queue.keys.job(rows[0].decode()))
    finally:
        queue.obliterate(force=True)
    return Inputs(rows=rows, flat=rows[1], mapping=mapping)


@pytest.fixture(scope="module")
def expected(inputs: Inputs) -> dict[str, Any]:
    """What the pure twin returns: each benchmark checks the implementation it
    timed gives the same (a correctness check, not a timing one)."""
    from sandboxq import _fast_py

    return {
        "flat": _fast_py.decode_job_flat(inputs.flat),
        "mapping": _fast_py.decode_job_mapping(inputs.mapping),
        "fetched": _fast_py.decode_fetched(inputs.rows),
        "dump": _fast_py.dump_json(SMALL_DATA, "data of job 'send_email'", MAX_PAYLOAD_BYTES),
    }


@pytest.mark.benchmark(group="fast: decode_job_flat")
def test_decode_job_flat(
    benchmark: Any, impl: Impl, inputs: Inputs, expected: dict[str, Any], record_rate: Any
) -> None:
    result = benchmark(impl.module.decode_job_flat, inputs.flat)
    assert result == expected["flat"]
    record_rate(f"decode_job_flat ({len(inputs.flat) // 2} fields)", impl.name)


@pytest.mark.benchmark(group="fast: decode_job_mapping")
def test_decode_job_mapping(
    benchmark: Any, impl: Impl, inputs: Inputs, expected: dict[str, Any], record_rate: Any
) -> None:
    result = benchmark(impl.module.decode_job_mapping, inputs.mapping)
    assert result == expected["mapping"]
    record_rate(f"decode_job_mapping ({len(inputs.mapping)} fields)", impl.name)


@pytest.mark.benchmark(group="fast: decode_fetched")
def test_decode_fetched(
    benchmark: Any, impl: Impl, inputs: Inputs, expected: dict[str, Any], record_rate: Any
) -> None:
    result = benchmark(impl.module.decode_fetched, inputs.rows)
    assert result == expected["fetched"]
    record_rate(f"decode_fetched ({BATCH} jobs per call)", impl.name, BATCH, "jobs")


@pytest.mark.benchmark(group="fast: dump_json")
def test_dump_json(benchmark: Any, impl: Impl, expected: dict[str, Any], record_rate: Any) -> None:
    result = benchmark(
        impl.module.dump_json, SMALL_DATA, "data of job 'send_email'", MAX_PAYLOAD_BYTES
    )
    assert result == expected["dump"]
    record_rate("dump_json (small dict)", impl.name)
