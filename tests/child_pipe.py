"""The socket a worker child talks to its parent on, for test handlers that
write to it behind sandboxq's back (as a buggy library, or a process the
handler forked, could)."""

from __future__ import annotations

import socket
import sys


def child_socket() -> socket.socket:
    """The socket of the child's serve loop (a local named ``sock``)."""
    frame = sys._getframe()
    while frame is not None:
        sock = frame.f_locals.get("sock")
        if isinstance(sock, socket.socket):
            return sock
        frame = frame.f_back  # type: ignore[assignment]
    raise RuntimeError("not running in a worker child")
