"""One line appended to a file, as test handlers record what ran where.

A single ``write`` of a short line to a file opened with O_APPEND lands
whole, whatever other processes append at the same time, so several
children (and workers) can share one record file without a lock."""

from __future__ import annotations

import os


def append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
