"""Frames between the worker parent and a child, over one socketpair each.

A frame is a 4-byte big-endian length and a body of typed items (None, int,
float, str, bytes; the format is documented in ``sandboxq/_fast_py.py``) whose
first item is the message kind. A child starts its jobs in the order it
was sent them, and the parent may queue a busy child's next few jobs on
its pipe, so the child never waits for them. A child runs one job at a
time, unless the worker runs with --async-concurrency N > 1: then it runs
up to N jobs of ``async def`` handlers at once on its event loop, and any
other job alone (``Pool.fits`` and ``async_child.Slots.fits`` keep the same
rule, so the parent always knows which of its jobs a child has started).
A child's death maps to the jobs it was running: those it started and has
not answered; those queued behind them never started.

Parent → child:  ["run", job_id, name, data_json, queue, attempts_made, retries,
                  children_json, steps_json] (encode_run / decode_run)
                 data_json, children_json (a flow parent's children's
                 results, else None) and steps_json (the durable steps
                 earlier attempts recorded, {key: result}, else None) are
                 JSON bytes from Redis, untouched: the child parses them,
                 the parent never does.
                 ["drop", job_id]: do not start that queued job (the worker
                 is stopping, or the job waited too long behind a slow one).
                 ["stepped", job_id, key, status]: step.lua's answer to a
                 "step" (recorded, known, lost or full).
                 ["stop", job_id]: cancel that running job's task (a
                 timeout, or a person cancelled it), in a child that runs
                 several async jobs at once; it answers "done" as usual
                 once the task ended. (A child that runs one job at a time
                 is stopped with signals instead, and never gets one.)
Child → parent:  ["ready", ""]: its on_child_start hooks ran; it takes jobs
                 from now on (the parent sends none before).
                 ["progress", job_id, value_json]
                 ["log", job_id, message]
                 ["step", job_id, key, result_json]: record a durable step
                 (job.step); the child waits for "stepped" before going on.
                 ["done", job_id, outcome, value, traceback, delay_seconds]
                 ["dropped", job_id]: it never started that job. A drop that
                 came too late (the job had started) is ignored, and the job
                 ends with "done" as usual. A child that is leaving answers
                 it, too, to the jobs it is sent after "leaving".
                 ["leaving", job_id, reason]: sent just before that job's
                 "done": the child cannot run another job cleanly (a task
                 the job left on its event loop ignored its cancellation),
                 and exits after this one (or, running several jobs at
                 once, after the others it runs, once the parent closed its
                 pipe); the jobs queued behind it never start there.

The parent reads each child's pipe with SO_PASSCRED: the kernel says which
process wrote each chunk, and what a process other than the child wrote (a
copy its handler forked shares the socket) is discarded, never decoded.

The parent treats what a child sends as untrusted input (the handler runs in
that process and can write to the socket): :func:`check_report` and
:func:`check_done` validate every item, and a frame that breaks the
protocol kills that child and fails its job, never the parent.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from sandboxq import execution, fast
from sandboxq.caps import (
    MAX_ERROR_BYTES,
    MAX_LOG_LINE_BYTES,
    MAX_PROGRESS_BYTES,
    MAX_STEP_KEY_BYTES,
    MAX_STEP_RESULT_BYTES,
    MAX_TRACEBACK_BYTES,
    clip_json,
    clip_text,
)
from sandboxq.options import seconds

RUN = "run"
READY = "ready"
LEAVING = "leaving"
PROGRESS = "progress"
LOG = "log"
DONE = "done"
DROP = "drop"
DROPPED = "dropped"
STEP = "step"
STEPPED = "stepped"
STOP = "stop"

#: The bytes of a frame's length header.
HEADER_SIZE = 4

#: The most either side reads from a pipe at once.
READ_SIZE = 65536

#: The largest frame body the parent reads; a child refuses to send a bigger one.
MAX_FRAME_SIZE = fast.MAX_FRAME_SIZE

#: A frame for ``message``: its 4-byte big-endian length and its items.
encode = fast.encode_frame

#: Reassembles frames from whatever a socket hands over. ``feed(data)``
#: returns the whole frames; a header declaring more than MAX_FRAME_SIZE
#: bytes raises ValueError (a corrupt stream), as does a malformed body.
FrameReader = fast.FrameDecoder


def encode_run(job: execution.StoredJob) -> bytes:
    """A "run" frame: the kind, then the StoredJob's items in its order
    (this and :func:`decode_run` are the frame's one encoding)."""
    return encode([RUN, *job])


def decode_run(message: list[Any]) -> execution.StoredJob:
    """A run frame the child read (from its own parent: trusted)."""
    return execution.StoredJob(*message[1:])


def send(sock: socket.socket, message: list[Any]) -> None:
    """Send one frame (blocking): the child's side. A frame over
    MAX_FRAME_SIZE raises ValueError here, in the child, rather than in the
    parent that would refuse it."""
    frame = encode(message)
    if len(frame) - HEADER_SIZE > MAX_FRAME_SIZE:
        raise ValueError(
            f"a {message[0]!r} frame of {len(frame) - HEADER_SIZE} bytes is over the "
            f"limit of {MAX_FRAME_SIZE} bytes the worker parent reads"
        )
    sock.sendall(frame)


class Inbox:
    """The child's side of reading: one whole message at a time (blocking)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # The parent sends a child no frame too big for it; reading its own
        # parent's frames, a child has no limit of its own to keep.
        self._reader = FrameReader(fast.MAX_FRAME_LIMIT)
        self._ready: deque[list[Any]] = deque()
        self._closed = False
        #: Reads so far, and whether the last one emptied the pipe (it
        #: returned less than READ_SIZE: a stream socket hands over all it
        #: holds, up to the size asked for).
        self._reads = 0
        self._emptied = False
        #: Whether the message next_message just returned came with a read
        #: that emptied the pipe: then dropped() needs no read of its own.
        self._fresh = False

    def recv(self) -> list[Any] | None:
        """The next message; None once the parent closed its end."""
        while not self._ready:
            if self._closed or not self._take(self._sock.recv(READ_SIZE)):
                return None
        return self._ready.popleft()

    def next_message(self, before_waiting: Callable[[], None]) -> list[Any] | None:
        """The next message for a child between jobs: one read already, else
        what the pipe holds now (one read, without waiting); only when that
        is nothing does ``before_waiting()`` run (the child shows it is
        idle), and this blocks until a message comes. None once the parent
        closed its end. A busy child's next job is usually on the pipe
        already, so it reads once between jobs, and when that read emptied
        the pipe the next :meth:`dropped` reads nothing more: a drop sent
        before the job was read came with it (one sent later is too late
        either way: the child starts the job, and answers ``done``)."""
        self._fresh = False
        reads = self._reads
        if not self._ready:
            self.read_available()
        if not self._ready:
            before_waiting()
        message = self.recv()
        self._fresh = self._reads != reads and self._emptied
        return message

    def wait_for(self, kind: str, job_id: str, key: str) -> list[Any] | None:
        """The parent's ``kind`` answer about ``job_id``'s ``key``: blocks
        until it comes; other messages (jobs queued behind this one, drops)
        stay queued, in order. None if the parent closed its end."""
        seen = 0
        while True:
            for index in range(seen, len(self._ready)):
                message = self._ready[index]
                if message[0] == kind and message[1] == job_id and message[2] == key:
                    del self._ready[index]
                    return message
            seen = len(self._ready)
            if self._closed or not self._take(self._sock.recv(READ_SIZE)):
                return None

    def dropped(self, job_id: str) -> bool:
        """Whether the parent asked, by now, not to start ``job_id``: reads
        what the pipe holds without waiting (unless :meth:`next_message`
        just emptied it), and takes that drop out."""
        if self._fresh:
            self._fresh = False
        else:
            self.read_available()
        for message in self._ready:
            if message[0] == DROP and message[1] == job_id:
                self._ready.remove(message)
                return True
        return False

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def pending(self) -> deque[list[Any]]:
        """The messages read and not taken yet, in order (the child's
        async loop takes them from here)."""
        return self._ready

    @property
    def closed(self) -> bool:
        """Whether the parent closed its end (what came before may still
        wait in ``pending``)."""
        return self._closed

    def read_available(self) -> None:
        """Read what the pipe holds now, without waiting (into ``pending``):
        until a read returns less than it asked for, which emptied the pipe
        (no further read to see it empty, usually an error raised)."""
        with contextlib.suppress(BlockingIOError):
            while not self._closed and self._take(self._sock.recv(READ_SIZE, socket.MSG_DONTWAIT)):
                if self._emptied:
                    return

    def _take(self, chunk: bytes) -> bool:
        self._reads += 1
        if not chunk:
            self._closed = True
            return False
        self._emptied = len(chunk) < READ_SIZE
        self._ready.extend(self._reader.feed(chunk))
        return True


class ProtocolError(ValueError):
    """A child sent a frame the protocol does not allow."""


#: What a child may send, and how many items each frame has (None: checked
#: by the frame's own check_* function).
_CHILD_FRAMES = {
    READY: 2,
    DROPPED: 2,
    LEAVING: 3,
    PROGRESS: None,
    LOG: None,
    STEP: None,
    DONE: None,
}


def check_header(message: list[Any]) -> tuple[str, str]:
    """A child's message kind and job id, checked."""
    if len(message) < 2 or message[0] not in _CHILD_FRAMES:
        raise ProtocolError(f"unknown message {_summary(message)}")
    if not isinstance(message[1], str):
        raise ProtocolError(f"a {message[0]!r} frame names job {message[1]!r}, not a str")
    size = _CHILD_FRAMES[message[0]]
    if size is not None and len(message) != size:
        raise ProtocolError(f"a {message[0]!r} frame has {size} items, got {_summary(message)}")
    return message[0], message[1]


def check_leaving(message: list[Any]) -> str:
    """Why a child leaves after its job (a short text)."""
    if not isinstance(message[2], str):
        raise ProtocolError(f"a leaving frame carries a reason, got {_summary(message)}")
    return clip_text(message[2], MAX_ERROR_BYTES)


def check_report(message: list[Any]) -> str:
    """A progress or log frame's value, checked and capped like the child
    caps it (sandboxq.caps)."""
    if len(message) != 3 or not isinstance(message[2], str):
        raise ProtocolError(f"a {message[0]!r} frame must carry one str, got {_summary(message)}")
    if message[0] == PROGRESS:
        return clip_json(message[2], MAX_PROGRESS_BYTES)
    return clip_text(message[2], MAX_LOG_LINE_BYTES)


def check_step(message: list[Any]) -> tuple[str, str]:
    """A step frame's key and result (JSON text), checked against the caps
    the child keeps (sandboxq.caps)."""
    if len(message) != 4 or not isinstance(message[2], str) or not isinstance(message[3], str):
        raise ProtocolError(f"a step frame carries a key and a result, got {_summary(message)}")
    key, result = message[2], message[3]
    if not key or len(key.encode()) > MAX_STEP_KEY_BYTES:
        raise ProtocolError(f"a step key of 1 to {MAX_STEP_KEY_BYTES} bytes, got {key[:50]!r}")
    if len(result.encode()) > MAX_STEP_RESULT_BYTES:
        raise ProtocolError(f"a step result over {MAX_STEP_RESULT_BYTES} bytes")
    return key, result


def check_done(message: list[Any], max_result_bytes: int) -> execution.Outcome:
    """A done frame as an Outcome the parent can settle: a known outcome,
    str texts (errors capped), a delay from 0 to 100 years, a result within
    the limit. The parent never parses the result: the child made it JSON."""
    if len(message) != 6:
        raise ProtocolError(f"a done frame has 6 items, got {_summary(message)}")
    _, _, kind, value, traceback, delay = message
    if kind not in execution.OUTCOMES:
        raise ProtocolError(f"unknown outcome {kind!r}")
    if not isinstance(value, str) or not isinstance(traceback, str):
        raise ProtocolError("a done frame's value and traceback must be str")
    try:
        delay = seconds("the delay", delay)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(str(exc)) from None
    if kind == execution.COMPLETED:
        size = len(value) if len(value) * 4 <= max_result_bytes else len(value.encode())
        if size > max_result_bytes:
            raise ProtocolError(f"a result of {size} bytes, over the limit of {max_result_bytes}")
    else:
        value = clip_text(value, MAX_ERROR_BYTES)
    return execution.Outcome(
        kind, value, clip_text(traceback, MAX_TRACEBACK_BYTES, keep_tail=True), delay
    )


def _summary(message: list[Any]) -> str:
    """A short description of a bad message, for the job's error."""
    return clip_text(repr(message), 200)
