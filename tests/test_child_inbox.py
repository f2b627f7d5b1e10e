"""A worker child between two jobs: how it takes its next job from the pipe
(``protocol.Inbox.next_message`` and ``dropped``), on a real socketpair.

A busy child's next job usually waits on its pipe already: the child then
reads the pipe once, and never shows itself idle; it shows idle only
before it blocks. A drop the parent sent is seen whether it came with the
job or after it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest

from sandboxq.worker import protocol

JOB_1 = [protocol.RUN, "1", "resize", b'{"w":1}', "q", 0, 0, None, None]
JOB_2 = [protocol.RUN, "2", "resize", b'{"w":2}', "q", 0, 0, None, None]


class CountedReads:
    """The child's end of a real socketpair, counting the reads made on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.reads += 1
        return self.sock.recv(size, flags)


@pytest.fixture
def pipe() -> Iterator[tuple[socket.socket, CountedReads, protocol.Inbox]]:
    """The parent's end, the child's end (its reads counted) and the child's inbox."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    counted = CountedReads(child)
    try:
        yield parent, counted, protocol.Inbox(cast(socket.socket, counted))
    finally:
        parent.close()
        child.close()


class Waits:
    """The child's ``before_waiting``: counts its calls, and may have the
    parent send something then (so the blocking read that follows returns)."""

    def __init__(self, parent: socket.socket, then_send: list[Any] | None = None) -> None:
        self.parent = parent
        self.then_send = then_send
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.then_send is not None:
            self.parent.sendall(protocol.encode(self.then_send))


def test_a_busy_child_takes_its_waiting_job_in_one_read_and_never_shows_idle(
    pipe: tuple[socket.socket, CountedReads, protocol.Inbox],
) -> None:
    parent, counted, inbox = pipe
    # Given a child whose next job waits on its pipe
    parent.sendall(protocol.encode(JOB_1))
    waits = Waits(parent)

    # When it takes that job and looks whether the parent dropped it
    message = inbox.next_message(waits)
    dropped = inbox.dropped("1")

    # Then it got the job, not dropped, in one read of the pipe, and never
    # showed itself idle
    assert message == JOB_1
    assert not dropped
    assert counted.reads == 1
    assert waits.calls == 0


def test_a_child_with_no_job_waiting_shows_idle_before_it_blocks(
    pipe: tuple[socket.socket, CountedReads, protocol.Inbox],
) -> None:
    parent, _counted, inbox = pipe
    # Given a child with nothing on its pipe, whose parent sends a job once
    # the child showed itself idle
    waits = Waits(parent, then_send=JOB_1)

    # When it asks for its next message
    message = inbox.next_message(waits)

    # Then it showed itself idle once, then got the job
    assert waits.calls == 1
    assert message == JOB_1
    assert not inbox.dropped("1")


def test_a_child_whose_parent_closed_the_pipe_shows_idle_and_gets_none(
    pipe: tuple[socket.socket, CountedReads, protocol.Inbox],
) -> None:
    parent, _counted, inbox = pipe
    # Given a parent that closed its end
    parent.close()
    waits = Waits(parent)

    # When the child asks for its next message
    # Then there is none, and the child shows itself idle meanwhile
    assert inbox.next_message(waits) is None
    assert waits.calls == 1


def test_a_drop_that_came_with_the_job_is_seen_without_another_read(
    pipe: tuple[socket.socket, CountedReads, protocol.Inbox],
) -> None:
    parent, counted, inbox = pipe
    # Given a job and the parent's drop of it, both on the pipe
    parent.sendall(protocol.encode(JOB_1) + protocol.encode([protocol.DROP, "1"]))

    # When the child takes the job
    assert inbox.next_message(Waits(parent)) == JOB_1

    # Then it sees the drop, from the one read that brought both
    assert inbox.dropped("1")
    assert counted.reads == 1


def test_a_drop_sent_after_an_earlier_read_brought_the_job_is_seen(
    pipe: tuple[socket.socket, CountedReads, protocol.Inbox],
) -> None:
    parent, _counted, inbox = pipe
    # Given two jobs that came in one read: the second waits in the inbox
    parent.sendall(protocol.encode(JOB_1) + protocol.encode(JOB_2))
    assert inbox.next_message(Waits(parent)) == JOB_1
    assert not inbox.dropped("1")

    # When the parent drops the second while the first runs, and the child
    # then takes the second from its inbox
    parent.sendall(protocol.encode([protocol.DROP, "2"]))
    assert inbox.next_message(Waits(parent)) == JOB_2

    # Then it reads the pipe before starting it, and sees the drop
    assert inbox.dropped("2")


def test_a_drop_sent_after_a_step_answer_was_read_is_seen(
    pipe: tuple[socket.socket, CountedReads, protocol.Inbox],
) -> None:
    parent, _counted, inbox = pipe
    # Given a job that recorded a step, whose answer came with the next job
    parent.sendall(protocol.encode(JOB_1))
    assert inbox.next_message(Waits(parent)) == JOB_1
    assert not inbox.dropped("1")
    stepped = [protocol.STEPPED, "1", "fetch", "recorded"]
    parent.sendall(protocol.encode(stepped) + protocol.encode(JOB_2))
    assert inbox.wait_for(protocol.STEPPED, "1", "fetch") == stepped

    # When the parent drops the next job after that, and the child takes it
    parent.sendall(protocol.encode([protocol.DROP, "2"]))
    assert inbox.next_message(Waits(parent)) == JOB_2

    # Then it sees the drop: the read during the job is not taken for a fresh one
    assert inbox.dropped("2")
