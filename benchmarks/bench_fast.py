"""Microbenchmarks of each hot-path function, native (``sandboxq._fast``) vs
pure (``sandboxq._fast_py``), on realistic inputs.

The job-hash inputs come from the real thing: jobs with typical options are
added to a private redis-server and leased with the fetch script once, so the
job hashes have the fields and encodings the package writes (JSON data and
backoff, millisecond times, counters, state and token). The functions are
then called directly; Redis is not involved in the timed part.

The frame codec gets the frames the worker sends: a RUN frame as
``Pool.assign`` builds it, and a 64 KiB read of DONE frames as a child sends
them. The limiter gets loops of 1,000 calls on a full window, the way the
worker parent would consult it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import redis

from sandboxq import Queue
from sandboxq.scripts import now_ms

if TYPE_CHECKING:
    from conftest import Impl

#: Jobs per fetch batch handed to ``decode_fetched``.
BATCH = 50

#: A RUN frame as ``Pool.assign`` encodes it: the data is the JSON from Redis.
RUN_FRAME = ["run", "123", "resize", b'{"path":"/x.png","w":256}', "images", 0, 0, None]

#: What one ``recv(65536)`` of the parent could hold.
CHUNK_BYTES = 64 * 1024

#: The limiter loops: calls per round, and the window they run on.
WINDOW_CALLS = 1000
WINDOW_MAX_JOBS = 100
WINDOW_MS = 1000


def done_frames() -> bytes:
    """As many whole DONE frames (a small JSON result each) as fit 64 KiB."""
    from sandboxq import _fast_py

    chunk = bytearray()
    for n in range(CHUNK_BYTES):
        value = f'{{"ok":true,"thumb":"/t/{n}.png"}}'
        frame = _fast_py.encode_frame(["done", str(40_000 + n), "completed", value, "", 0.0])
        if len(chunk) + len(frame) > CHUNK_BYTES:
            return bytes(chunk)
        chunk += frame
    raise AssertionError("unreachable")


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
        # fetch.lua returns [rows, next_check_ms, ...]: only the rows matter here
        rows = queue.scripts.fetch(queue.keys, now_ms(), BATCH, "bench-token", 60_000)[0]
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


# -- the frame codec -------------------------------------------------------------
@pytest.mark.benchmark(group="fast: encode_frame")
def test_encode_frame(benchmark: Any, impl: Impl, record_rate: Any) -> None:
    from sandboxq import _fast_py

    result = benchmark(impl.module.encode_frame, RUN_FRAME)
    assert result == _fast_py.encode_frame(RUN_FRAME)
    record_rate("encode_frame (RUN frame)", impl.name)


@pytest.mark.benchmark(group="fast: FrameDecoder.feed")
def test_frame_decoder_feed(benchmark: Any, impl: Impl, record_rate: Any) -> None:
    from sandboxq import _fast_py

    chunk = done_frames()
    expected = _fast_py.FrameDecoder().feed(chunk)
    decoder = impl.module.FrameDecoder()
    result = benchmark(decoder.feed, chunk)  # whole frames: nothing is left between calls
    assert result == expected and decoder.buffered == 0
    record_rate(
        f"FrameDecoder.feed (64 KiB, {len(expected)} DONE frames)",
        impl.name,
        len(expected),
        "frames",
    )


# -- limiter bookkeeping ----------------------------------------------------------
#: The clock of every loop: the window holds one start every 10 ms of the last
#: second, and each call comes 1 ms after the one before, so starts leave the
#: window as the loop goes (and ``record`` keeps it full).
START_MS = 1_700_000_000_000


def full_window(module: Any) -> Any:
    window = module.SlidingWindow(WINDOW_MAX_JOBS, WINDOW_MS)
    window.sync(range(START_MS - WINDOW_MS + 10, START_MS + 1, 10))
    assert window.allowed(START_MS) == 0
    return window


def allowed_loop(window: Any) -> None:
    allowed = window.allowed
    for now in range(START_MS, START_MS + WINDOW_CALLS):
        allowed(now)


def record_loop(window: Any) -> None:
    record = window.record
    for now in range(START_MS, START_MS + WINDOW_CALLS):
        record(now, 1)


def opens_at_loop(window: Any) -> None:
    opens_at = window.opens_at
    for now in range(START_MS, START_MS + WINDOW_CALLS):
        opens_at(now)


WINDOW_LOOPS: dict[str, Callable[[Any], None]] = {
    "allowed": allowed_loop,
    "record": record_loop,
    "opens_at": opens_at_loop,
}


def trace(module: Any, method: str) -> list[Any]:
    """What a loop's calls return, and what the window holds after each."""
    window = full_window(module)
    out = []
    for now in range(START_MS, START_MS + WINDOW_CALLS):
        args = (now, 1) if method == "record" else (now,)
        out.append((getattr(window, method)(*args), len(window)))
    return out


@pytest.mark.parametrize("method", list(WINDOW_LOOPS))
def test_sliding_window(benchmark: Any, impl: Impl, record_rate: Any, method: str) -> None:
    from sandboxq import _fast_py

    benchmark.group = f"fast: SlidingWindow.{method}"
    loop = WINDOW_LOOPS[method]
    # A fresh full window per round (untimed), so every round does the same work.
    benchmark.pedantic(
        loop,
        setup=lambda: ((full_window(impl.module),), {}),
        rounds=400,
        warmup_rounds=20,
    )
    assert trace(impl.module, method) == trace(_fast_py, method)
    record_rate(
        f"SlidingWindow.{method} ({WINDOW_CALLS} calls, max_jobs={WINDOW_MAX_JOBS})",
        impl.name,
        WINDOW_CALLS,
        "calls",
    )
