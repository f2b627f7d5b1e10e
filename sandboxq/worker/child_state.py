"""What the parent knows of each child (:class:`Child`) and of each job it
holds (:class:`Assignment`): plain records the parts read, which only the
:class:`~sandboxq.worker.pool.Pool` changes."""

from __future__ import annotations

import math
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sandboxq.execution import StoredJob
from sandboxq.worker import proctree, protocol


@dataclass(slots=True)
class Assignment:
    """A job leased for this worker: buffered, queued on a child, or running."""

    queue: str
    job_id: str
    name: str
    fields: dict[str, Any]
    timeout: float | None
    #: What the child is sent to run it.
    run: StoredJob
    #: Whether Redis already marked it started (fetch.lua, for the jobs a
    #: free child takes at once); else the parent reports its real start.
    start_reported: bool = False
    #: When it was leased (monotonic): a prefetched job waits for a child of
    #: this worker only so long (the parent hands it back after that).
    leased: float = field(default_factory=time.monotonic)
    #: When a child started it (monotonic): what its timeout counts from.
    started: float = 0.0
    #: Settled as cancelled while it waited (a person cancelled it).
    cancelled: bool = False
    #: Its handler is ``async def``: with --async-concurrency > 1 it shares a
    #: child with other such jobs (execution.runs_concurrently).
    concurrent: bool = False
    #: Why the parent stopped it in a child it shares ("stop" frame): its
    #: timeout, or a person cancelled it (``stop_cancels``); and when
    #: (monotonic), for the kill grace.
    stop_reason: str | None = None
    stop_cancels: bool = False
    stop_sent: float = 0.0
    #: The log bytes this run sent, and what it sent past its budget
    #: (dropped: see Supervisor._on_log).
    log_bytes: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0

    @property
    def attempt(self) -> int:
        return int(self.fields.get("attempts_made", 0)) + 1

    def log_fields(self, pid: int) -> dict[str, Any]:
        """The fields of a log line about this run of the job, in ``pid``."""
        return {
            "job_id": self.job_id,
            "job_name": self.name,
            "queue": self.queue,
            "attempt": self.attempt,
            "pid": pid,
        }


@dataclass(slots=True, eq=False)
class Child:
    index: int
    pid: int
    sock: socket.socket
    #: When it was forked (monotonic): its start hooks get hook_timeout.
    born: float = field(default_factory=time.monotonic)
    #: It said "ready": its on_child_start hooks ran; it takes jobs.
    ready: bool = False
    reader: protocol.FrameReader = field(default_factory=protocol.FrameReader)
    outbox: bytearray = field(default_factory=bytearray)
    #: The jobs it runs, by id, in start order: one, or with
    #: --async-concurrency up to that many async jobs (Pool.fits).
    jobs: dict[str, Assignment] = field(default_factory=dict)
    #: The jobs queued behind them on the pipe, in order, not started yet
    #: (as far as the parent knows: the child's "done" for a job it runs
    #: says the first one has, if it fits then).
    queued: deque[Assignment] = field(default_factory=deque)
    #: Queued jobs the parent asked the child not to start (``drop``).
    dropping: set[str] = field(default_factory=set)
    jobs_done: int = 0
    retiring: bool = False
    #: When a retiring child's exit hooks are out of time (monotonic).
    retire_deadline: float = math.inf
    #: Why it leaves after its job ("leaving"): it takes no more jobs.
    leaving: str | None = None
    #: Processes other than the child that wrote to its pipe (a copy its
    #: handler forked), and the bytes each wrote: discarded.
    foreign: dict[int, int] = field(default_factory=dict)
    #: The parent does not read its pipe for now (its job's reports wait
    #: for Redis): the child blocks on a full pipe until it reads again.
    held: bool = False
    #: Its end of the pipe closed: it is exiting, not yet reaped.
    closed: bool = False
    #: Why the parent killed it (timeout, memory); None if it died on its own.
    kill_reason: str | None = None
    #: Killed because a person cancelled the job it ran alone: the job ends
    #: cancelled.
    cancelling: bool = False
    term_sent_at: float | None = None
    sigkilled: bool = False
    #: The job's processes when the parent first signalled them: a process
    #: that left the group is re-parented away if the child dies first, and
    #: must still get the SIGKILL.
    signalled: proctree.Snapshot = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    @property
    def takes_jobs(self) -> bool:
        """Ready, and neither asked to exit nor exiting."""
        return self.ready and not self.retiring and not self.closed and self.leaving is None

    def fileno(self) -> int:
        return self.sock.fileno()
