"""Frames between the worker parent and a child, over one socketpair each.

A frame is a 4-byte big-endian length and a body of typed items (None, int,
float, str, bytes; the format is documented in ``sandboxq/_fast_py.py``) whose
first item is the message kind. One child runs one job at a time, so a
child's death maps to exactly one job: whatever it was sent last and has not
answered.

Parent → child:  ["run", job_id, name, data_json, queue, attempts_made, retries,
                  children_json]
                 data_json and children_json (a flow parent's children's
                 results, else None) are the JSON bytes from Redis, untouched:
                 the child parses them, the parent never does.
Child → parent:  ["progress", job_id, value_json]
                 ["log", job_id, message]
                 ["done", job_id, outcome, value, traceback, delay_seconds]
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any

from sandboxq import fast

RUN = "run"
PROGRESS = "progress"
LOG = "log"
DONE = "done"

#: The bytes of a frame's length header.
HEADER_SIZE = 4

#: The largest frame body the parent reads; a child refuses to send a bigger one.
MAX_FRAME_SIZE = fast.MAX_FRAME_SIZE

#: A frame for ``message``: its 4-byte big-endian length and its items.
encode = fast.encode_frame

#: Reassembles frames from whatever a socket hands over. ``feed(data)``
#: returns the whole frames; a header declaring more than MAX_FRAME_SIZE
#: bytes raises ValueError (a corrupt stream), as does a malformed body.
FrameReader = fast.FrameDecoder


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

    def recv(self) -> list[Any] | None:
        """The next message; None once the parent closed its end."""
        while not self._ready:
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            self._ready.extend(self._reader.feed(chunk))
        return self._ready.popleft()
