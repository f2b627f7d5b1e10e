"""Handlers for tests/test_async_concurrency.py: async jobs that share a
child (--async-concurrency), and a sync one that must run alone. Each
records where and when it ran, so the tests judge by what happened."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Any

from sandboxq import JobContext, handler

Q = os.environ.get("SANDBOXQ_TEST_QUEUE", "concurrent")


def ran(started: float, **more: Any) -> dict[str, Any]:
    """Where and when a job ran: its child and its start and end times."""
    return {"pid": os.getpid(), "started": started, "ended": time.time(), **more}


@handler(Q)
async def nap(job: JobContext) -> Any:
    """Awaits for ``data`` seconds: an I/O-bound job (a webhook, say)."""
    started = time.time()
    await asyncio.sleep(float(job.data))
    return ran(started)


async def released(path: str) -> None:
    """Wait until the test creates ``path``: jobs hold on to their child
    until the test has seen what it needs, with no clock involved."""
    while not os.path.exists(path):
        await asyncio.sleep(0.01)


@handler(Q)
async def hold(job: JobContext) -> Any:
    """Says which child runs it (progress), then waits for its release."""
    started = time.time()
    job.update_progress({"pid": os.getpid()})
    await released(job.data["release"])
    return ran(started)


@handler(Q)
async def crash_when(job: JobContext) -> Any:
    """Says which child runs it, then crashes that child (a segfault) once
    released."""
    job.update_progress({"pid": os.getpid()})
    await released(job.data["release"])
    ctypes.string_at(0)
    return "never"


@handler(Q)
async def stubborn(job: JobContext) -> Any:
    """Swallows every cancellation: only killing its child ends it."""
    job.update_progress({"pid": os.getpid()})
    deadline = time.monotonic() + float(job.data)
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue
    return "outlived its stop"


@handler(Q)
async def chatty(job: JobContext) -> Any:
    """Logs and reports progress naming itself, yielding to the others
    between each: its lines and progress must be its own."""
    for step in range(5):
        job.log(f"{job.data} line {step}")
        job.update_progress({"who": job.data, "step": step})
        await asyncio.sleep(0.01)
    return job.data


@handler(Q)
async def stepper(job: JobContext) -> Any:
    """Records durable steps while other jobs run (awaited, plain, and from
    a thread), then returns them."""

    async def tag(step: int) -> str:
        await asyncio.sleep(0.01)
        return f"{job.data}:{step}"

    def plain(step: int) -> str:
        return f"{job.data}:plain:{step}"

    recorded = []
    for step in range(3):
        recorded.append(await job.step(f"async-{step}", tag, step))
        recorded.append(job.step(f"plain-{step}", plain, step))
        recorded.append(await asyncio.to_thread(job.step, f"thread-{step}", plain, -step))
    return recorded


@handler(Q)
def alone(job: JobContext) -> Any:
    """A sync handler: blocks for ``data`` seconds, so it must have its
    child to itself."""
    started = time.time()
    time.sleep(float(job.data))
    return ran(started)


@handler(Q)
async def leak(job: JobContext) -> Any:
    """Leaves a task behind that ignores its cancellation and runs on."""

    async def stubborn_task() -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    asyncio.get_running_loop().create_task(stubborn_task())
    await asyncio.sleep(0)
    return os.getpid()


@handler(Q)
async def bloat(job: JobContext) -> Any:
    """Says which child runs it; once released, takes ``bytes`` of memory
    and holds them until its child is killed."""
    job.update_progress({"pid": os.getpid()})
    await released(job.data["release"])
    hog = b"x" * int(job.data["bytes"])
    while True:
        await asyncio.sleep(0.05)
        assert hog


@handler(Q)
async def cancels_itself(job: JobContext) -> Any:
    """Raises CancelledError of its own (no one stopped it)."""
    await asyncio.sleep(0)
    raise asyncio.CancelledError("gave up")
