"""Handlers for the worker tests: one crash mode each.

The test worker imports this module (``sandboxq worker tests.jobs``), so it
must stay importable from the repository root.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from sandboxq import JobContext, RateLimited, Retry, Unrecoverable, fast, handler
from sandboxq.handlers import REGISTRY
from tests.appending import append_line
from tests.child_pipe import child_socket

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


#: The longest a gated job waits for its gate: a test that never opens it failed.
GATE_TIMEOUT_SECONDS = 90.0


def wait_for_file(path: str) -> None:
    """Wait until ``path`` exists (a test's go-ahead); RuntimeError after
    GATE_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"gate {path} not opened within {GATE_TIMEOUT_SECONDS}s")
        time.sleep(0.01)  # polling the go-ahead, not standing in for it


@handler(Q)
def chaos(job: JobContext) -> Any:
    """Record this run, then do what ``data`` says: return, raise or exit.

    ``data``: {"runs": path, "action": "ok" | "raise" | "exit",
    "sleep": seconds, "code": exit code, "gate": path}. Each run appends the
    job id to ``runs`` in one O_APPEND write, so concurrent runs never
    interleave. With a ``gate``, the job goes on only once that file exists:
    the test says when it ends, whatever the machine's speed.
    """
    fd = os.open(job.data["runs"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job.id}\n".encode())
    finally:
        os.close(fd)
    if gate := job.data.get("gate"):
        wait_for_file(gate)
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
def gated_value(job: JobContext) -> Any:
    """Return ``data["value"]`` once the file ``data["gate"]`` exists."""
    wait_for_file(job.data["gate"])
    return job.data["value"]


@handler(Q)
def join_dependencies(job: JobContext) -> Any:
    """A job added with depends_on: its dependencies' results."""
    return job.dependency_results()


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


# -- values a handler controls (the parent must survive whatever they are) ------
@handler(Q)
def retry_nan(job: JobContext) -> Any:
    raise Retry(delay=float("nan"))


@handler(Q)
def rate_limited_inf(job: JobContext) -> Any:
    raise RateLimited(retry_after=float("inf"))


@handler(Q)
def retry_delay_changed(job: JobContext) -> Any:
    """A Retry whose delay is set after it was checked (data: the delay)."""
    exc = Retry(1)
    exc.delay = float(job.data)
    raise exc


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@handler(Q)
def unprintable_error(job: JobContext) -> Any:
    raise _Unprintable()


@handler(Q)
def big_result(job: JobContext) -> Any:
    """A result of ``data`` bytes as JSON (a string of data - 2 characters)."""
    return "x" * (int(job.data) - 2)


@handler(Q)
def nan_result(job: JobContext) -> Any:
    return {"ratio": float("nan")}


@handler(Q)
def always_fail(job: JobContext) -> Any:
    raise RuntimeError(f"attempt {job.attempts_made + 1} failed")


#: Items JSON cannot carry, for forge_frame's data.
_FORGED = {"$nan": float("nan"), "$inf": float("inf"), "$bytes": b"raw"}


@handler(Q)
def forge_frame(job: JobContext) -> Any:
    """Send the parent a frame of ``data`` (a list; "$id" is this job's id,
    "$nan", "$inf" and "$bytes" what they say) behind sandboxq's back, then
    wait to be killed."""
    items = [job.id if item == "$id" else _FORGED.get(item, item) for item in job.data]
    child_socket().sendall(fast.encode_frame(items))
    time.sleep(30)


@handler(Q)
def noisy(job: JobContext) -> Any:
    """Leave as much text as a job can: 20 log lines and 20 progress values
    of 1 MB each, then an error of 5 MB."""
    megabyte = "é" * (512 * 1024)
    for step in range(20):
        job.log(f"line {step} {megabyte}")
        job.update_progress({"step": step, "blob": megabyte})
    raise RuntimeError("E" * (5 * 1024 * 1024))


# -- subprocesses: part of the job ----------------------------------------------
def _record(path: str, pid: int) -> None:
    append_line(path, str(pid))


def _start_helpers(pids_file: str) -> None:
    """Start what a job may leave behind, recording each pid: an exec'd
    program, a forked copy of the child (it keeps the child's title), and a
    program that left the process group (setsid)."""
    sleeper = subprocess.Popen(["sleep", "120"])
    _record(pids_file, sleeper.pid)
    forked = os.fork()
    if forked == 0:  # pragma: no cover - the forked copy
        time.sleep(120)
        os._exit(0)
    _record(pids_file, forked)
    escaped = subprocess.Popen(["sleep", "121"], start_new_session=True)
    _record(pids_file, escaped.pid)


@handler(Q)
def spawn_and_hang(job: JobContext) -> Any:
    _start_helpers(job.data["pids"])
    while True:
        time.sleep(1)


@handler(Q)
def spawn_stubborn_and_hang(job: JobContext) -> Any:
    """Start a program that leaves the process group and ignores SIGTERM,
    record its pid, then hang: a timeout's SIGTERM ends the child at once,
    and the program must still get the SIGKILL."""
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)\n"
    stubborn = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    _record(job.data["pids"], stubborn.pid)
    while True:
        time.sleep(1)


@handler(Q)
def spawn_and_return(job: JobContext) -> Any:
    _start_helpers(job.data["pids"])
    return "left them running"


@handler(Q)
def spawn_and_exit(job: JobContext) -> Any:
    _start_helpers(job.data["pids"])
    os._exit(3)


@handler(Q)
def subprocess_allocates(job: JobContext) -> Any:
    """A subprocess that holds ``data["mib"]`` MiB, resident, until killed."""
    code = (
        "import time, sys\n"
        f"block = bytearray({int(job.data['mib'])} * 1024 * 1024)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    _record(job.data["pids"], child.pid)
    child.wait()
    return "the subprocess ended"


# -- more queues: SANDBOXQ_TEST_EXTRA_QUEUES="a,b" serves every handler there too --
for _extra in filter(None, os.environ.get("SANDBOXQ_TEST_EXTRA_QUEUES", "").split(",")):
    for (_queue, _name), _found in list(REGISTRY.items()):
        if _queue == Q:
            handler(_extra, _name)(_found.func)


# -- async handlers ---------------------------------------------------------------
@handler(Q)
async def async_echo(job: JobContext) -> Any:
    """Awaits, then returns its data with where it ran: the pid and the
    running loop's id, so a test can tell one child's jobs share a loop."""
    import asyncio

    await asyncio.sleep(0.01)
    job.update_progress(50)
    return {"echo": job.data, "pid": os.getpid(), "loop": id(asyncio.get_running_loop())}


@handler(Q)
async def async_hang(job: JobContext) -> Any:
    import asyncio

    await asyncio.sleep(30)


@handler(Q)
async def async_raise(job: JobContext) -> Any:
    raise ValueError(f"async bad input {job.data}")


@handler(Q)
async def async_retry_once(job: JobContext) -> Any:
    if job.attempts_made == 0 and job.retries == 0:
        raise Retry(delay=0.01)
    return "retried"


@handler(Q)
async def async_leave_task(job: JobContext) -> Any:
    """Starts a task that would append to a file for a while, and returns at
    once: the task must not run on after its job."""
    import asyncio

    async def scribble() -> None:
        for _ in range(50):
            with open(job.data, "a") as out:
                out.write("x")
            await asyncio.sleep(0.01)

    asyncio.get_running_loop().create_task(scribble())
    await asyncio.sleep(0)
    return "left a task"


@handler(Q)
def record_data(job: JobContext) -> Any:
    """Append ``<job id> <data as JSON>`` to ``data["runs"]`` (one O_APPEND
    write): which job ran, and with which data."""
    append_line(job.data["runs"], f"{job.id} {json.dumps(job.data, sort_keys=True)}")
    return job.id
