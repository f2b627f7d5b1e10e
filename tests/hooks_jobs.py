"""A handler module with every lifecycle hook and two job middlewares, for
tests/test_hooks.py. Each hook appends ``moment pid`` to
``$SANDBOXQ_TEST_HOOKS``; ``$SANDBOXQ_TEST_FAIL_HOOK`` names a hook that
raises instead. Handlers return what the child-start hook opened, so a test
can tell each child opened its own."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sandboxq import (
    JobContext,
    handler,
    job_middleware,
    on_child_exit,
    on_child_start,
    on_worker_start,
    on_worker_stop,
)
from tests.appending import append_line

Q = os.environ.get("SANDBOXQ_TEST_QUEUE", "hooks")
LOG = os.environ.get("SANDBOXQ_TEST_HOOKS", os.devnull)
FAIL = os.environ.get("SANDBOXQ_TEST_FAIL_HOOK", "")

#: What on_child_start opens: stands for a database connection.
connection: dict[str, int] | None = None


def note(line: str) -> None:
    append_line(LOG, f"{line} {os.getpid()}")


def moment(name: str) -> None:
    note(name)
    if name == FAIL:
        raise RuntimeError(f"{name} failed on purpose")


@on_worker_start
def worker_start() -> None:
    moment("worker_start")


@on_worker_stop
def worker_stop() -> None:
    moment("worker_stop")


@on_child_start
def child_start() -> None:
    global connection
    moment("child_start")
    connection = {"opened_by": os.getpid()}


@on_child_exit
def child_exit() -> None:
    moment("child_exit")


@job_middleware
def outer(job: JobContext, call_next: Any) -> Any:
    note(f"outer-before {job.id}")
    result = call_next(job)
    if asyncio.iscoroutine(result):  # an async chain: pass the awaitable on
        return result
    note(f"outer-after {job.id}")
    return {"outer": result}


@job_middleware
async def inner(job: JobContext, call_next: Any) -> Any:
    note(f"inner-before {job.id}")
    result = await call_next(job)
    note(f"inner-after {job.id}")
    return {"inner": result}


@handler(Q)
def opened(job: JobContext) -> Any:
    note(f"handler {job.id}")
    return connection


@handler(Q)
async def opened_async(job: JobContext) -> Any:
    note(f"handler {job.id}")
    await asyncio.sleep(0)
    return connection
