"""Frames between the worker parent and a child, over one socketpair each.

A frame is a 4-byte big-endian length and a JSON array whose first item is
the message kind. One child runs one job at a time, so a child's death maps
to exactly one job: whatever it was sent last and has not answered.

Parent → child:  ["run", job_id, name, data, queue, meta]
                 meta: {"attempts_made": n, "retries": n, "children": {ref: result}},
                 keys other than attempts_made only when they apply
Child → parent:  ["progress", job_id, value_json]
                 ["log", job_id, message]
                 ["done", job_id, outcome, value, traceback, delay_seconds]
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

from sandboxq import fast

RUN = "run"
PROGRESS = "progress"
LOG = "log"
DONE = "done"

_HEADER = struct.Struct(">I")

#: The largest frame body the parent reads; a child refuses to send a bigger one.
MAX_FRAME_SIZE = fast.MAX_FRAME_SIZE

#: A frame for ``message``: its 4-byte big-endian length and its JSON.
encode = fast.encode_frame

#: Reassembles frames from whatever a non-blocking socket hands over: the
#: parent's side, which must never wait on one child. ``feed(data)`` returns
#: the whole frames; a header declaring more than MAX_FRAME_SIZE bytes raises
#: ValueError (a corrupt stream), as does a body that is not JSON.
FrameReader = fast.FrameDecoder


def send(sock: socket.socket, message: list[Any]) -> None:
    """Send one frame (blocking): the child's side. A frame over
    MAX_FRAME_SIZE raises ValueError here, in the child, rather than in the
    parent that would refuse it."""
    frame = encode(message)
    if len(frame) - _HEADER.size > MAX_FRAME_SIZE:
        raise ValueError(
            f"a {message[0]!r} frame of {len(frame) - _HEADER.size} bytes is over the "
            f"limit of {MAX_FRAME_SIZE} bytes the worker parent reads"
        )
    sock.sendall(frame)


def recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Read exactly ``size`` bytes (blocking); None at end of stream."""
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> list[Any] | None:
    """Read one whole frame (blocking): the child's side."""
    header = recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    body = recv_exact(sock, _HEADER.unpack(header)[0])
    return None if body is None else orjson.loads(body)
