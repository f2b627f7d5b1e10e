"""Handlers and hooks that try the worker's fault barriers, for
tests/test_fault_barriers.py: handlers that fork, flood, leak tasks, and
hooks that are slow, hang or exit. Each hook misbehaves only when its
environment variable asks it to, so one module serves every test."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from sandboxq import (
    JobContext,
    handler,
    on_child_exit,
    on_child_start,
    on_worker_stop,
)
from sandboxq.worker import protocol
from tests.child_pipe import child_socket

Q = os.environ.get("SANDBOXQ_TEST_QUEUE", "barriers")
#: Seconds each on_child_start takes (a database that is slow to connect).
CHILD_START_SECONDS = float(os.environ.get("SANDBOXQ_TEST_CHILD_START_SECONDS", "0"))
#: on_child_exit never returns.
CHILD_EXIT_HANGS = os.environ.get("SANDBOXQ_TEST_CHILD_EXIT_HANGS") == "1"
#: on_worker_stop raises SystemExit with this code.
STOP_EXIT_CODE = os.environ.get("SANDBOXQ_TEST_STOP_EXIT_CODE", "")

#: When this child's on_child_start finished (time.time()).
child_ready_at = 0.0


@on_child_start
def slow_child_start() -> None:
    global child_ready_at
    time.sleep(CHILD_START_SECONDS)
    child_ready_at = time.time()


@on_child_exit
def hanging_child_exit() -> None:
    while CHILD_EXIT_HANGS:
        time.sleep(1)


@on_worker_stop
def exiting_worker_stop() -> None:
    if STOP_EXIT_CODE:
        raise SystemExit(int(STOP_EXIT_CODE))


def ok(job: JobContext) -> Any:
    return {"pid": os.getpid(), "child_ready_at": child_ready_at, "started_at": time.time()}


#: ``ok`` is served on each queue of ``$SANDBOXQ_TEST_QUEUES`` (default: Q).
for _queue in os.environ.get("SANDBOXQ_TEST_QUEUES", Q).split(","):
    handler(_queue, "ok")(ok)


@handler(Q)
def sleep(job: JobContext) -> Any:
    time.sleep(float(job.data))
    return os.getpid()


@handler(Q)
def fork_and_return(job: JobContext) -> Any:
    """Forks and lets the copy return from the handler too (a common bug):
    the copy returns "copy" at once; the child waits for it, then returns
    "real"."""
    pid = os.fork()
    if pid == 0:
        return "copy"
    os.waitpid(pid, 0)
    return "real"


@handler(Q)
def fork_and_forge(job: JobContext) -> Any:
    """Forks a copy that writes a forged result straight onto the pipe (past
    the child's own checks, as a buggy library could) and exits; the child
    waits for it, then returns "real"."""
    pid = os.fork()
    if pid == 0:
        forged = [protocol.DONE, job.id, "completed", '"forged"', "", 0.0]
        child_socket().sendall(protocol.encode(forged))
        os._exit(0)
    os.waitpid(pid, 0)
    return "real"


@handler(Q)
def copy_reports(job: JobContext) -> Any:
    """A forked copy tries the job's own reporting: it must be refused."""
    pid = os.fork()
    if pid == 0:
        try:
            job.log("from the copy")
        except RuntimeError as exc:
            os._exit(3 if "forked by the job's handler" in str(exc) else 4)
        os._exit(5)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@handler(Q)
def flood_logs(job: JobContext) -> Any:
    """Logs ``data["lines"]`` lines of ``data["bytes"]`` bytes each, as fast as it can."""
    line = "x" * int(job.data["bytes"])
    for _ in range(int(job.data["lines"])):
        job.log(line)
    return "flooded"


@handler(Q)
def flood_progress(job: JobContext) -> Any:
    for done in range(int(job.data) + 1):
        job.update_progress({"done": done, "pad": "p" * 2000})
    return "flooded"


@handler(Q)
def oom_scores(job: JobContext) -> Any:
    """This child's oom_score_adj, and the worker parent's."""

    def score(pid: int) -> int:
        return int(Path(f"/proc/{pid}/oom_score_adj").read_text())

    return {"child": score(os.getpid()), "parent": score(os.getppid())}


@handler(Q)
async def leak_task(job: JobContext) -> Any:
    """Leaves a task behind that ignores its cancellation and runs on."""

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    return os.getpid()
