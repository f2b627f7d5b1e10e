"""Handlers for the worker tests: one crash mode each.

The test worker imports this module (``sandboxq worker tests.jobs``), so it
must stay importable from the repository root.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

from sandboxq import JobContext, RateLimited, Retry, Unrecoverable, handler

Q = os.environ.get("SANDBOXQ_TEST_QUEUE", "crash")


@handler(Q)
def ok(job: JobContext) -> Any:
    return {"echo": job.data, "pid": os.getpid()}


@handler(Q)
def raise_error(job: JobContext) -> Any:
    raise ValueError(f"bad input {job.data!r}")


@handler(Q)
def unrecoverable(job: JobContext) -> Any:
    raise Unrecoverable("card declined")


@handler(Q)
def retry_once(job: JobContext) -> Any:
    if job.retries == 0:
        raise Retry(delay=0)
    return f"retried {job.retries} time(s)"


@handler(Q)
def exit_code(job: JobContext) -> Any:
    os._exit(int(job.data))


@handler(Q)
def kill_self(job: JobContext) -> Any:
    os.kill(os.getpid(), int(job.data))
    time.sleep(10)


@handler(Q)
def segfault(job: JobContext) -> Any:
    ctypes.string_at(0)


@handler(Q)
def allocate(job: JobContext) -> Any:
    """Hold ``data`` MiB, touching every page so it is resident."""
    block = bytearray(int(job.data) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(30)
    return len(block)


@handler(Q)
def hang(job: JobContext) -> Any:
    while True:
        time.sleep(1)


@handler(Q)
def ignore_term_and_hang(job: JobContext) -> Any:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


@handler(Q)
def sleep(job: JobContext) -> Any:
    time.sleep(float(job.data))
    return "slept"


@handler(Q)
def progress(job: JobContext) -> Any:
    for step in range(1, 4):
        job.update_progress(step * 33)
        job.log(f"step {step}")
    return "done"


@handler(Q)
def noop(job: JobContext) -> Any:
    return None


@handler(Q)
def kill_parent(job: JobContext) -> Any:
    """SIGKILL the worker parent (a poison job that keeps killing its worker),
    then return once the parent is gone: the result frame finds no reader."""
    parent = os.getppid()
    os.kill(parent, signal.SIGKILL)
    while os.getppid() == parent:
        time.sleep(0.01)
    return "outlived my parent"


@handler(Q)
def chaos(job: JobContext) -> Any:
    """Record this run, then do what ``data`` says: return, raise or exit.

    ``data``: {"runs": path, "action": "ok" | "raise" | "exit",
    "sleep": seconds, "code": exit code}. Each run appends the job id to
    ``runs`` in one O_APPEND write, so concurrent runs never interleave.
    """
    fd = os.open(job.data["runs"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job.id}\n".encode())
    finally:
        os.close(fd)
    time.sleep(job.data.get("sleep", 0))
    action = job.data["action"]
    if action == "raise":
        raise ValueError(f"chaos raised in job {job.id}")
    if action == "exit":
        os._exit(job.data.get("code", 5))
    return job.id


@handler(Q)
def sum_tree(job: JobContext) -> Any:
    """A flow node: its own number plus its children's results."""
    return int(job.data) + sum(job.children_results().values())


@handler(Q)
def stamp(job: JobContext) -> Any:
    """Return when it started (seconds since the epoch)."""
    return time.time()


@handler(Q)
def downstream_limited(job: JobContext) -> Any:
    """The first run (in any process) reports a downstream rate limit of
    ``data["retry_after"]`` seconds; later runs return when they started."""
    try:
        fd = os.open(job.data["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return time.time()
    os.close(fd)
    raise RateLimited(retry_after=float(job.data["retry_after"]))


@handler(Q)
def fail_until_marker(job: JobContext) -> Any:
    """Fails until the file named by ``data["marker"]`` exists: a job that a
    manual retry can fix (the dashboard's browser test)."""
    marker = job.data["marker"]
    if not os.path.exists(marker):
        raise RuntimeError(f"marker file {marker} is missing")
    return {"fixed": True}
