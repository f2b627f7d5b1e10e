"""Pure-Python twin of ``sandboxq._fast``: the same names, the same results.

``sandboxq.fast`` chooses between the two; nothing else imports either one.
Keep every function here and in ``_fast.pyx`` in step: the tests run both
against the same cases (``tests/test_fast.py``). The native module imports
what is not hot from here: the field table, the limits and ``_bounded``.
"""

from __future__ import annotations

import operator
import struct
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Iterable
from itertools import repeat
from typing import Any

# -- the job-hash codec ---------------------------------------------------------
# How each job-hash field is decoded. JSON fields (the payload, the result,
# progress, backoff, a flow parent's children) stay the JSON bytes Redis
# holds: the worker parent only forwards them, so they are parsed once, where
# they are used (the child, ``Job``). Unknown fields decode as text, so an
# older reader survives fields a newer writer added; one that is not UTF-8
# (another tool wrote it) is left out: it is not ours to read.
#
# A record is untrusted input (anything may write to Redis): a known field
# that does not hold what its kind needs raises CorruptRecord, naming the
# field and its value, and a fetch decodes each job on its own, so one
# corrupt record fails that job and nothing else.
_JSON = 1
_INT = 2
_SECONDS = 3  # stored as integer milliseconds
_TEXT = 4

FIELD_KINDS: dict[bytes, int] = {
    b"data": _JSON,
    b"children": _JSON,
    b"result": _JSON,
    b"progress": _JSON,
    b"backoff": _JSON,
    b"priority": _INT,
    b"attempts": _INT,
    b"attempts_made": _INT,
    b"stalls": _INT,
    b"retries": _INT,
    b"leases": _INT,
    b"pending": _INT,
    b"seq": _INT,
    b"kc_count": _INT,
    b"kf_count": _INT,
    b"created_at": _SECONDS,
    b"started_at": _SECONDS,
    b"finished_at": _SECONDS,
    b"timeout": _SECONDS,
    b"kc_age": _SECONDS,
    b"kf_age": _SECONDS,
    b"name": _TEXT,
    b"state": _TEXT,
    b"token": _TEXT,
    b"group": _TEXT,
    b"error": _TEXT,
    b"traceback": _TEXT,
    b"parent_id": _TEXT,
    b"parent_prefix": _TEXT,
    b"manual_retry_only": _TEXT,
    b"waiting_since": _TEXT,
    b"settled": _TEXT,
}

#: Each known field's name as text and its kind: one lookup per field.
_KNOWN: dict[bytes, tuple[str, int]] = {f: (f.decode(), k) for f, k in FIELD_KINDS.items()}

#: Integer fields must fit a signed 64-bit integer: frames and Lua carry them.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: How much of a bad value an error message shows.
_SHOWN_CHARS = 40


class CorruptRecord(ValueError):
    """A stored job record this version cannot read. The message names the
    problem: ``corrupt record: field 'timeout' = '1.5' is not an integer``."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"corrupt record: {problem}")


def corrupt_field(name: str, value: bytes, problem: str) -> CorruptRecord:
    """The error for known field ``name`` holding ``value``: the value is
    shown as text (bytes that are not UTF-8 escaped), clipped."""
    shown = value.decode(errors="backslashreplace")
    if len(shown) > _SHOWN_CHARS:
        shown = shown[:_SHOWN_CHARS] + "…"
    return CorruptRecord(f"field '{name}' = '{shown}' {problem}")


def stored_int(name: str, value: bytes) -> int:
    """An integer field's value, or CorruptRecord. Only what sandboxq writes
    is read: "-"? and ASCII digits, as the Lua scripts read them too
    (lua/include/common.lua, stored_number); int() alone would also take
    " 7 ", "+7" and "1_000". (The native module parses the common case
    itself and comes here for the rest.)"""
    digits = value[1:] if value[:1] == b"-" else value
    if not digits.isdigit():  # bytes.isdigit: ASCII only; False when empty
        raise corrupt_field(name, value, "is not an integer")
    try:
        number = int(value)
    except ValueError:  # more digits than int() reads
        raise corrupt_field(name, value, "is not an integer") from None
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise corrupt_field(name, value, "is out of range (a signed 64-bit integer)")
    return number


def _decode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in pairs:
        known = _KNOWN.get(field)
        if known is None:
            # (Not contextlib.suppress: a context manager per field is slow.)
            try:  # noqa: SIM105
                out[field.decode()] = value.decode()
            except UnicodeDecodeError:
                pass  # another tool's field: not ours to read
            continue
        name, kind = known
        if kind == _JSON:
            out[name] = value
        elif kind == _TEXT:
            try:
                out[name] = value.decode()
            except UnicodeDecodeError:
                raise corrupt_field(name, value, "is not UTF-8 text") from None
        else:
            # The common case inline: non-negative, under 19 digits (int64).
            fits = value.isdigit() and len(value) < 19
            number = int(value) if fits else stored_int(name, value)
            out[name] = number if kind == _INT else number / 1000.0
    return out


def decode_job_flat(flat: list[bytes]) -> dict[str, Any]:
    """A job hash as Lua returns it (``[field, value, ...]``) → typed fields."""
    if len(flat) % 2:
        raise ValueError(f"a job hash needs field/value pairs, got {len(flat)} items")
    return _decode_pairs(zip(flat[::2], flat[1::2], strict=True))


def decode_job_mapping(mapping: dict[bytes, bytes]) -> dict[str, Any]:
    """A job hash as HGETALL returns it (a dict) → typed fields."""
    return _decode_pairs(mapping.items())


def decode_fetched(rows: list[Any]) -> list[tuple[str, dict[str, Any] | CorruptRecord]]:
    """fetch.lua's ``[id, hash, id, hash, ...]`` → ``[(id, fields), ...]``,
    each job decoded on its own: a record that cannot be decoded comes back
    as its CorruptRecord instead of its fields. An id that is not UTF-8 is
    decoded with surrogate escapes (``id.encode("utf-8", "surrogateescape")``
    gives the stored bytes back), and its record is corrupt."""
    if len(rows) % 2:
        raise ValueError(f"fetched rows need id/hash pairs, got {len(rows)} items")
    out: list[tuple[str, dict[str, Any] | CorruptRecord]] = []
    for i in range(0, len(rows), 2):
        fields: dict[str, Any] | CorruptRecord
        try:
            job_id = rows[i].decode()
        except UnicodeDecodeError:
            job_id = rows[i].decode(errors="surrogateescape")
            fields = CorruptRecord("its id is not UTF-8 text")
        else:
            try:
                fields = decode_job_flat(rows[i + 1])
            except CorruptRecord as exc:
                fields = exc
        out.append((job_id, fields))
    return out


# -- limits shared with the native module -------------------------------------
#: The largest frame body a FrameDecoder accepts unless told otherwise.
MAX_FRAME_SIZE = 64 * 1024 * 1024
#: What a 4-byte big-endian length can declare.
MAX_FRAME_LIMIT = 0xFFFF_FFFF
#: max_jobs and window_ms must fit a signed 64-bit integer.
INT64_LIMIT = 2**63 - 1


def _bounded(name: str, value: int, minimum: int, maximum: int) -> int:
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


# -- the parent <-> child frame codec -----------------------------------------
# A frame is a 4-byte big-endian body length, then the body: the message's
# items back to back, each a one-byte tag and its value:
#   N  None
#   I  int, 8 bytes, signed big-endian
#   F  float, 8 bytes, IEEE 754 binary64 big-endian
#   S  str, a 4-byte big-endian length, then that many bytes of UTF-8
#   B  bytes, a 4-byte big-endian length, then the bytes
# Exact types only (a bool is not an int here). JSON payloads travel as B
# items, untouched, so the parent never parses or re-serializes them.
_HEADER = struct.Struct(">I")
_SIZED_ITEM = struct.Struct(">cI")  # tag, length
_INT_ITEM = struct.Struct(">cq")
_FLOAT_ITEM = struct.Struct(">cd")
_LENGTH = _HEADER  # a sized item's length is written like the frame's
_INT64_VALUE = struct.Struct(">q")
_FLOAT64_VALUE = struct.Struct(">d")
_TAG_INT, _TAG_FLOAT, _TAG_STR, _TAG_BYTES, _TAG_NONE = b"IFSBN"
_INT64 = range(-(2**63), 2**63)


def _too_long(size: int) -> ValueError:
    return ValueError(f"a frame item of {size} bytes does not fit a 4-byte length")


def encode_frame(message: list[Any]) -> bytes:
    """The frame of ``message``, a list of None, int, float, str and bytes."""
    if type(message) is not list:
        raise TypeError(f"a frame message must be a list, not {type(message).__name__}")
    out = bytearray(_HEADER.size)  # the header, once the body's length is known
    for item in message:
        kind = type(item)
        if kind is str:
            raw = item.encode()
            if len(raw) > MAX_FRAME_LIMIT:
                raise _too_long(len(raw))
            out += _SIZED_ITEM.pack(b"S", len(raw))
            out += raw
        elif kind is bytes:
            if len(item) > MAX_FRAME_LIMIT:
                raise _too_long(len(item))
            out += _SIZED_ITEM.pack(b"B", len(item))
            out += item
        elif kind is int:
            if item not in _INT64:
                raise ValueError("a frame int must fit in 64 bits (signed)")
            out += _INT_ITEM.pack(b"I", item)
        elif kind is float:
            out += _FLOAT_ITEM.pack(b"F", item)
        elif item is None:
            out += b"N"
        else:
            raise TypeError(
                f"a frame item must be None, int, float, str or bytes, not {kind.__name__}"
            )
    size = len(out) - _HEADER.size
    if size > MAX_FRAME_LIMIT:
        raise ValueError(f"a frame body of {size} bytes does not fit a 4-byte length")
    _HEADER.pack_into(out, 0, size)
    return bytes(out)


def _corrupt(reason: str, at: int) -> ValueError:
    return ValueError(f"a corrupt frame: {reason} at byte {at} of its body")


def _decode_body(body: bytes) -> list[Any]:
    """The items of one frame body."""
    items: list[Any] = []
    end = len(body)
    pos = 0
    while pos < end:
        tag = body[pos]
        if tag in (_TAG_STR, _TAG_BYTES):
            stop = pos + 5
            if stop > end:
                raise _corrupt("an item runs past the end", pos)
            stop += _LENGTH.unpack_from(body, pos + 1)[0]
            if stop > end:
                raise _corrupt("an item runs past the end", pos)
            value = body[pos + 5 : stop]
            items.append(value.decode() if tag == _TAG_STR else value)
            pos = stop
        elif tag == _TAG_NONE:
            items.append(None)
            pos += 1
        elif tag in (_TAG_INT, _TAG_FLOAT):
            if pos + 9 > end:
                raise _corrupt("an item runs past the end", pos)
            layout = _INT64_VALUE if tag == _TAG_INT else _FLOAT64_VALUE
            items.append(layout.unpack_from(body, pos + 1)[0])
            pos += 9
        else:
            raise _corrupt(f"unknown item tag 0x{tag:02x}", pos)
    return items


class FrameDecoder:
    """Reassembles frames from chunks of a byte stream cut anywhere.

    A header declaring more than ``max_frame_size`` bytes raises ValueError as
    soon as it arrives, before any of its body is buffered. A body that does
    not hold whole, well-tagged items raises ValueError once the frame is
    complete (UnicodeDecodeError, also a ValueError, for a str item that is
    not UTF-8). After an error the offending frame stays at the front, so
    every later ``feed`` raises again.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._max = _bounded("max_frame_size", max_frame_size, 1, MAX_FRAME_LIMIT)
        self._buffer = bytearray()

    @property
    def max_frame_size(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[list[Any]]:
        """The frames ``data`` completes, in order; the rest is kept."""
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        try:
            while len(buffer) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, start)
                if size > self._max:
                    raise ValueError(
                        f"a frame declares {size} bytes, over the limit of "
                        f"{self._max} bytes (max_frame_size)"
                    )
                end = start + _HEADER.size + size
                if end > len(buffer):
                    break
                messages.append(_decode_body(bytes(buffer[start + _HEADER.size : end])))
                start = end
        finally:
            del buffer[:start]  # bytearray drops a prefix without moving the rest
        return messages


# -- limiter bookkeeping --------------------------------------------------------
class SlidingWindow:
    """The worker parent's copy of a queue's sliding-window limit: at most
    ``max_jobs`` starts in any ``window_ms``. A start at ``t`` counts while
    ``t > now - window_ms``.

    Time never runs backwards here: every call takes ``now_ms`` as the latest
    time any call has seen. Starts are kept in order, at most ``max_jobs`` of
    them (the newest: older ones cannot change any answer), and dropped once
    they leave the window.
    """

    __slots__ = ("_latest", "_log", "_max", "_window")

    def __init__(self, max_jobs: int, window_ms: int) -> None:
        self._max = _bounded("max_jobs", max_jobs, 1, INT64_LIMIT)
        self._window = _bounded("window_ms", window_ms, 1, INT64_LIMIT)
        self._log: deque[int] = deque(maxlen=self._max)
        self._latest: int | None = None  # no time seen yet

    @property
    def max_jobs(self) -> int:
        return self._max

    @property
    def window_ms(self) -> int:
        return self._window

    def __len__(self) -> int:
        """Starts in the window at the latest time seen (at most max_jobs)."""
        return len(self._log)

    def _advance(self, now_ms: int) -> int:
        """The latest time seen, ``now_ms`` included; drops starts it expired."""
        now = self._latest
        if now is None or now_ms > now:
            self._latest = now = now_ms
        cutoff = now - self._window
        log = self._log
        while log and log[0] <= cutoff:
            log.popleft()
        return now

    def allowed(self, now_ms: int) -> int:
        """How many more starts the window takes now."""
        self._advance(now_ms)
        return self._max - len(self._log)

    def opens_at(self, now_ms: int) -> int:
        """When ``allowed`` is next above 0: now, or when the oldest start leaves."""
        now = self._advance(now_ms)
        log = self._log
        if len(log) < self._max:
            return now
        return log[0] + self._window

    def record(self, now_ms: int, count: int) -> None:
        """``count`` jobs started at ``now_ms``."""
        if count < 0:
            raise ValueError(f"count must be at least 0, got {count}")
        now = self._advance(now_ms)
        count = min(count, self._max)
        if count == 0 or now_ms <= now - self._window:
            return
        log = self._log
        if not log or now_ms >= log[-1]:
            log.extend(repeat(now_ms, count))  # maxlen drops the oldest
            return
        for _ in range(count):  # the clock stepped back: insert in order
            if len(log) == self._max:
                if now_ms <= log[0]:
                    return  # older than every start kept: it cannot matter
                log.popleft()
            insort(log, now_ms)

    def sync(self, starts_ms: Iterable[int]) -> None:
        """Replace the log with starts read from Redis (any order)."""
        starts = sorted(starts_ms)
        first = 0 if self._latest is None else bisect_right(starts, self._latest - self._window)
        self._log.clear()
        self._log.extend(starts[first:])  # maxlen keeps the newest
