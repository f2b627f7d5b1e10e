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

RUN = "run"
PROGRESS = "progress"
LOG = "log"
DONE = "done"

_HEADER = struct.Struct(">I")


def encode(message: list[Any]) -> bytes:
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: list[Any]) -> None:
    sock.sendall(encode(message))


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


class FrameReader:
    """Reassembles frames from whatever a non-blocking socket hands over:
    the parent's side, which must never wait on one child."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        self._buffer += data
        messages = []
        view = self._buffer
        offset = 0
        while len(view) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(view, offset)
            end = offset + _HEADER.size + size
            if end > len(view):
                break
            messages.append(orjson.loads(bytes(view[offset + _HEADER.size : end])))
            offset = end
        del self._buffer[:offset]
        return messages
