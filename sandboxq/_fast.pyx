# cython: language_level=3, boundscheck=False, wraparound=False
"""Native hot path: the same functions as ``sandboxq/_fast_py.py``, compiled.

Keep the two in step; ``tests/test_fast.py`` runs both on the same cases.
"""

import operator

import orjson
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint32_t
from libc.string cimport memcpy

cdef int _JSON = 1
cdef int _INT = 2
cdef int _SECONDS = 3
cdef int _TEXT = 4

FIELD_KINDS = {
    b"data": _JSON, b"result": _JSON, b"progress": _JSON, b"backoff": _JSON,
    b"priority": _INT, b"attempts": _INT, b"attempts_made": _INT, b"stalls": _INT,
    b"retries": _INT, b"pending": _INT, b"children": _JSON,
    b"seq": _INT, b"kc_count": _INT, b"kf_count": _INT,
    b"created_at": _SECONDS, b"started_at": _SECONDS, b"finished_at": _SECONDS,
    b"timeout": _SECONDS, b"kc_age": _SECONDS, b"kf_age": _SECONDS,
}

cdef dict _KINDS = FIELD_KINDS
# Known field names decoded once: a lookup instead of a decode per field.
cdef dict _NAMES = {field: field.decode() for field in FIELD_KINDS}
cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps


def dump_json(value, str what, Py_ssize_t max_bytes):
    cdef bytes raw
    try:
        raw = _dumps(value)
    except TypeError as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None
    if len(raw) > max_bytes:
        raise ValueError(f"{what} is {len(raw)} bytes as JSON, over the limit of "
                         f"{max_bytes} bytes (max_payload_bytes)")
    return raw


cdef inline bint _parse_int(bytes value, int64_t* out):
    """Canonical decimal integers ("-"? digits, at most 15 of them, so exact
    as a double) in C; anything else is left to Python's int(), so both twins
    accept and reject exactly the same inputs."""
    cdef const char* text = PyBytes_AS_STRING(value)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value), i = 0
    cdef int64_t number = 0
    cdef bint negative = size > 0 and text[0] == 45  # '-'
    if negative:
        i = 1
    if size - i < 1 or size - i > 15:
        return False
    while i < size:
        if text[i] < 48 or text[i] > 57:  # not '0'..'9'
            return False
        number = number * 10 + (text[i] - 48)
        i += 1
    out[0] = -number if negative else number
    return True


cdef inline object _decode(bytes field, bytes value):
    cdef object kind_obj = _KINDS.get(field)
    cdef int kind = _TEXT if kind_obj is None else <int>kind_obj
    cdef int64_t number
    if kind == _JSON:
        return _loads(value)
    if kind == _INT:
        return number if _parse_int(value, &number) else int(value)
    if kind == _SECONDS:
        return number / 1000.0 if _parse_int(value, &number) else int(value) / 1000.0
    return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), NULL)


cdef inline str _name(bytes field):
    cdef object known = _NAMES.get(field)
    return field.decode() if known is None else <str>known


def decode_job_flat(list flat):
    cdef dict out = {}
    cdef Py_ssize_t i, n = len(flat)
    cdef bytes field
    cdef str name
    if n % 2:
        raise ValueError(f"a job hash needs field/value pairs, got {n} items")
    for i in range(0, n, 2):
        field = <bytes?>flat[i]
        name = _name(field)  # before the value, as the twin does
        out[name] = _decode(field, <bytes?>flat[i + 1])
    return out


def decode_job_mapping(dict mapping):
    cdef dict out = {}
    cdef bytes field
    cdef str name
    for field, value in mapping.items():
        name = _name(field)  # before the value, as the twin does
        out[name] = _decode(field, <bytes?>value)
    return out


def decode_fetched(list rows):
    cdef list out = []
    cdef Py_ssize_t i, n = len(rows)
    if n % 2:
        raise ValueError(f"fetched rows need id/hash pairs, got {n} items")
    for i in range(0, n, 2):
        out.append(((<bytes?>rows[i]).decode(), decode_job_flat(<list?>rows[i + 1])))
    return out


# -- limits shared with the twin ----------------------------------------------
#: The largest frame body a FrameDecoder accepts unless told otherwise.
MAX_FRAME_SIZE = 64 * 1024 * 1024
#: What a 4-byte big-endian length can declare.
MAX_FRAME_LIMIT = 0xFFFF_FFFF
#: max_jobs and window_ms must fit a signed 64-bit integer.
INT64_LIMIT = 2**63 - 1


def _bounded(str name, value, minimum, maximum):
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


# -- the parent <-> child frame codec -----------------------------------------
cdef inline uint32_t _read_length(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef Py_ssize_t _MAX_BODY = MAX_FRAME_LIMIT


def encode_frame(message):
    cdef bytes body = _dumps(message)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    if n > _MAX_BODY:
        raise ValueError(f"a frame body of {n} bytes does not fit a 4-byte length")
    # One allocation and one copy: the header is written in place.
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, n + 4)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(frame)
    out[0] = <unsigned char>((n >> 24) & 0xFF)
    out[1] = <unsigned char>((n >> 16) & 0xFF)
    out[2] = <unsigned char>((n >> 8) & 0xFF)
    out[3] = <unsigned char>(n & 0xFF)
    memcpy(out + 4, PyBytes_AS_STRING(body), n)
    return frame


cdef Py_ssize_t _SHRINK_ABOVE = 1024 * 1024


cdef class FrameDecoder:
    """Whole frames straight from each chunk; only the unfinished tail of a
    chunk (one incomplete frame) is copied into ``_pending``, so every byte is
    copied at most once before orjson sees it and nothing is ever compacted."""

    cdef unsigned char* _pending
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef uint32_t _max

    def __cinit__(self):
        self._pending = NULL
        self._len = 0
        self._cap = 0

    def __init__(self, max_frame_size=MAX_FRAME_SIZE):
        self._max = <uint32_t>_bounded("max_frame_size", max_frame_size, 1, MAX_FRAME_LIMIT)

    def __dealloc__(self):
        PyMem_Free(self._pending)

    @property
    def max_frame_size(self):
        return self._max

    @property
    def buffered(self):
        return self._len

    cdef int _append(self, const unsigned char* src, Py_ssize_t n) except -1:
        cdef Py_ssize_t need = self._len + n
        cdef Py_ssize_t cap
        cdef unsigned char* grown
        if n == 0:
            return 0
        if need > self._cap:
            cap = max(need, 2 * self._cap, 256)
            grown = <unsigned char*>PyMem_Realloc(self._pending, cap)
            if grown == NULL:
                raise MemoryError()
            self._pending = grown
            self._cap = cap
        memcpy(self._pending + self._len, src, n)
        self._len = need
        return 0

    cdef void _release(self) noexcept:
        self._len = 0
        if self._cap > _SHRINK_ABOVE:  # don't keep a big frame's buffer around
            PyMem_Free(self._pending)
            self._pending = NULL
            self._cap = 0

    cdef object _too_big(self, uint32_t size):
        return ValueError(f"a frame declares {size} bytes, over the limit of "
                          f"{self._max} bytes (max_frame_size)")

    def feed(self, data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef list _feed(self, const unsigned char* p, Py_ssize_t n):
        cdef list messages = []
        cdef Py_ssize_t pos = 0, take, total
        cdef uint32_t size = 0
        if self._len:
            # An unfinished frame from earlier chunks: complete it first.
            if self._len < 4:
                take = min(4 - self._len, n)
                self._append(p, take)
                pos = take
                if self._len < 4:
                    return messages
            size = _read_length(self._pending)
            if size > self._max:
                raise self._too_big(size)
            total = 4 + <Py_ssize_t>size
            take = min(total - self._len, n - pos)
            self._append(p + pos, take)
            pos += take
            if self._len < total:
                return messages
            # On a decode error the frame stays pending, as in the twin.
            messages.append(_loads(PyBytes_FromStringAndSize(<char*>self._pending + 4, size)))
            self._release()
        try:
            while n - pos >= 4:
                size = _read_length(p + pos)
                if size > self._max:
                    raise self._too_big(size)
                if n - pos - 4 < <Py_ssize_t>size:
                    break
                messages.append(_loads(PyBytes_FromStringAndSize(<char*>p + pos + 4, size)))
                pos += 4 + <Py_ssize_t>size
        except BaseException:
            # Keep the offending frame (or its header), so the next feed
            # raises the same error, like the twin's buffer does.
            self._append(p + pos, min(n - pos, 4 + <Py_ssize_t>size))
            raise
        if pos < n:
            self._append(p + pos, n - pos)
        return messages


# -- limiter bookkeeping --------------------------------------------------------
cdef class SlidingWindow:
    """A ring of int64 start times, oldest first, sorted, at most max_jobs long
    (growing as needed up to that). Starts are dropped from the front once
    they leave the window, when the next call looks at the time."""

    cdef int64_t* _ring
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _head
    cdef Py_ssize_t _size
    cdef Py_ssize_t _max
    cdef int64_t _window
    cdef int64_t _latest

    def __cinit__(self):
        self._ring = NULL
        self._cap = self._head = self._size = 0
        self._latest = INT64_MIN

    def __init__(self, max_jobs, window_ms):
        self._max = _bounded("max_jobs", max_jobs, 1, INT64_LIMIT)
        self._window = _bounded("window_ms", window_ms, 1, INT64_LIMIT)

    def __dealloc__(self):
        PyMem_Free(self._ring)

    @property
    def max_jobs(self):
        return self._max

    @property
    def window_ms(self):
        return self._window

    def __len__(self):
        return self._size

    cdef inline Py_ssize_t _slot(self, Py_ssize_t i) noexcept:
        i += self._head
        return i - self._cap if i >= self._cap else i

    cdef inline bint _expired(self, int64_t t) noexcept:
        # t <= latest - window, without overflowing below INT64_MIN
        return self._latest >= INT64_MIN + self._window and t <= self._latest - self._window

    cdef inline void _advance(self, int64_t now) noexcept:
        if now > self._latest:
            self._latest = now
        while self._size and self._expired(self._ring[self._head]):
            self._head += 1
            if self._head == self._cap:
                self._head = 0
            self._size -= 1

    cdef int _reserve(self, Py_ssize_t need) except -1:
        """Room for ``need`` starts (need <= max_jobs), oldest at slot 0."""
        cdef Py_ssize_t cap, i
        cdef int64_t* ring
        if need <= self._cap:
            return 0
        cap = min(self._max, max(need, 2 * self._cap, 16))
        ring = <int64_t*>PyMem_Malloc(cap * sizeof(int64_t))
        if ring == NULL:
            raise MemoryError()
        for i in range(self._size):
            ring[i] = self._ring[self._slot(i)]
        PyMem_Free(self._ring)
        self._ring = ring
        self._cap = cap
        self._head = 0
        return 0

    def allowed(self, int64_t now_ms):
        self._advance(now_ms)
        return self._max - self._size

    def opens_at(self, int64_t now_ms):
        cdef int64_t oldest
        self._advance(now_ms)
        if self._size < self._max:
            return self._latest
        oldest = self._ring[self._head]
        if oldest > INT64_MAX - self._window:
            return (<object>oldest) + self._window
        return oldest + self._window

    def record(self, int64_t now_ms, count):
        cdef Py_ssize_t k, j
        cdef int64_t prev
        if count < 0:
            raise ValueError(f"count must be at least 0, got {count}")
        self._advance(now_ms)
        if count > self._max:
            k = self._max
        else:
            k = count
        if k == 0 or self._expired(now_ms):
            return
        while k:
            if self._size == self._max:
                if now_ms <= self._ring[self._head]:
                    return  # older than every start kept: it cannot matter
                self._head += 1
                if self._head == self._cap:
                    self._head = 0
                self._size -= 1
            elif self._size == self._cap:
                self._reserve(self._size + 1)
            # insert in order; at the end unless the clock stepped back
            j = self._size
            while j:
                prev = self._ring[self._slot(j - 1)]
                if prev <= now_ms:
                    break
                self._ring[self._slot(j)] = prev
                j -= 1
            self._ring[self._slot(j)] = now_ms
            self._size += 1
            k -= 1

    def sync(self, starts_ms):
        cdef list starts = sorted(starts_ms)
        cdef Py_ssize_t n = len(starts), first = n, keep, i
        cdef int64_t t
        while first and n - first < self._max:
            t = starts[first - 1]
            if self._expired(t):
                break
            first -= 1
        keep = n - first
        self._size = 0
        self._head = 0
        self._reserve(keep)
        for i in range(keep):
            self._ring[i] = starts[first + i]
        self._size = keep
