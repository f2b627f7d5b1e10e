# cython: language_level=3, boundscheck=False, wraparound=False
"""Native hot path: the same functions as ``sandboxq/_fast_py.py``, compiled.

Keep the two in step; ``tests/test_fast.py`` runs both on the same cases, and
``_fast_py.py`` documents the formats. What is not hot (the field table, the
limits, argument checks) is the twin's own, imported, so it exists once.
"""

from sandboxq import _fast_py as _twin
from sandboxq._fast_py import (
    FIELD_KINDS,
    INT64_LIMIT,
    MAX_FRAME_LIMIT,
    MAX_FRAME_SIZE,
    CorruptRecord,
    _bounded,
    corrupt_field,
    stored_int,
)

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact, PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact, PyLong_FromLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_DecodeUTF8
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    # A dict with room for ``n`` items: no resizing while a job hash fills it.
    dict _PyDict_NewPresized(Py_ssize_t n)


# -- the job-hash codec ---------------------------------------------------------
cdef enum:
    _JSON = 1
    _INT = 2
    _SECONDS = 3
    _TEXT = 4

# The kinds FIELD_KINDS (the twin's table) is written in.
assert (_JSON, _INT, _SECONDS, _TEXT) == (_twin._JSON, _twin._INT, _twin._SECONDS, _twin._TEXT)


cdef class _Field:
    """A known field: its stored name, its name as text (decoded once), and
    its kind."""
    cdef bytes raw
    cdef str name
    cdef int kind

    def __cinit__(self, bytes raw, int kind):
        self.raw = raw
        self.name = raw.decode()
        self.kind = kind


# Known fields are found by length, then memcmp, not with a dict: the names
# Redis returns are new bytes objects each time, and a dict lookup of one
# (hash, then a generic rich compare) cost a third of decoding a job hash.
cdef enum:
    _LONGEST_NAME = 31

# Sorted by length; _by_size[n] .. _by_size[n + 1] are the fields n bytes long.
cdef list _FIELDS = [_Field(f, FIELD_KINDS[f]) for f in sorted(FIELD_KINDS, key=len)]
cdef Py_ssize_t _by_size[_LONGEST_NAME + 2]


cdef void _index_fields():
    cdef Py_ssize_t size, i = 0
    for size in range(_LONGEST_NAME + 2):
        while i < len(_FIELDS) and len((<_Field>_FIELDS[i]).raw) < size:
            i += 1
        _by_size[size] = i


assert max(len(f) for f in FIELD_KINDS) <= _LONGEST_NAME
_index_fields()


cdef inline _Field _known(bytes field):
    """The known field stored under this name, or None."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(field), i
    cdef _Field candidate
    if size > _LONGEST_NAME:
        return None
    for i in range(_by_size[size], _by_size[size + 1]):
        candidate = <_Field>PyList_GET_ITEM(_FIELDS, i)
        if memcmp(PyBytes_AS_STRING(candidate.raw), PyBytes_AS_STRING(field), size) == 0:
            return candidate
    return None


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


cdef inline str _text(bytes raw):
    return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), NULL)


cdef inline int _put(dict out, object field_obj, object value_obj) except -1:
    cdef bytes field = <bytes?>field_obj
    cdef bytes value = <bytes?>value_obj
    cdef int64_t number
    cdef _Field known = _known(field)
    if known is None:
        try:
            out[_text(field)] = _text(value)
        except UnicodeDecodeError:
            pass  # another tool's field: not ours to read (as the twin does)
        return 0
    if known.kind == _JSON:
        out[known.name] = value
    elif known.kind == _INT:
        out[known.name] = number if _parse_int(value, &number) else stored_int(known.name, value)
    elif known.kind == _SECONDS:
        out[known.name] = (number / 1000.0 if _parse_int(value, &number)
                           else stored_int(known.name, value) / 1000.0)
    else:
        try:
            out[known.name] = _text(value)
        except UnicodeDecodeError:
            raise corrupt_field(known.name, value, "is not UTF-8 text") from None
    return 0


def decode_job_flat(list flat):
    cdef Py_ssize_t i, n = PyList_GET_SIZE(flat)
    if n % 2:
        raise ValueError(f"a job hash needs field/value pairs, got {n} items")
    cdef dict out = _PyDict_NewPresized(n // 2)
    for i in range(0, n, 2):
        _put(out, <object>PyList_GET_ITEM(flat, i), <object>PyList_GET_ITEM(flat, i + 1))
    return out


def decode_job_mapping(dict mapping):
    cdef dict out = _PyDict_NewPresized(len(mapping))
    cdef Py_ssize_t pos = 0
    cdef PyObject* field
    cdef PyObject* value
    while PyDict_Next(mapping, &pos, &field, &value):  # borrowed references
        _put(out, <object>field, <object>value)
    return out


def decode_fetched(list rows):
    cdef list out = []
    cdef Py_ssize_t i, n = PyList_GET_SIZE(rows)
    cdef bytes raw_id
    if n % 2:
        raise ValueError(f"fetched rows need id/hash pairs, got {n} items")
    for i in range(0, n, 2):
        raw_id = <bytes?>PyList_GET_ITEM(rows, i)
        try:
            job_id = _text(raw_id)
        except UnicodeDecodeError:
            job_id = raw_id.decode(errors="surrogateescape")
            out.append((job_id, CorruptRecord("its id is not UTF-8 text")))
            continue
        try:
            fields = decode_job_flat(<list?>PyList_GET_ITEM(rows, i + 1))
        except CorruptRecord as exc:
            fields = exc
        out.append((job_id, fields))
    return out


# -- the parent <-> child frame codec -----------------------------------------
# The format is described in _fast_py.py: a 4-byte big-endian body length,
# then tagged items (N, I, F, S, B).
cdef enum:
    _TAG_NONE = 78   # 'N'
    _TAG_INT = 73    # 'I'
    _TAG_FLOAT = 70  # 'F'
    _TAG_STR = 83    # 'S'
    _TAG_BYTES = 66  # 'B'

cdef Py_ssize_t _MAX_LENGTH = MAX_FRAME_LIMIT


cdef inline uint32_t _read_u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t _read_u64(const unsigned char* p) noexcept nogil:
    return (<uint64_t>_read_u32(p) << 32) | _read_u32(p + 4)


cdef inline void _write_u32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline void _write_u64(unsigned char* p, uint64_t v) noexcept nogil:
    _write_u32(p, <uint32_t>(v >> 32))
    _write_u32(p + 4, <uint32_t>v)  # the low half


cdef union _Bits:
    double number
    uint64_t bits
    int64_t signed


cdef Py_ssize_t _item_size(object item) except -1:
    """The bytes ``item`` takes in a body, checking it as the twin does."""
    cdef Py_ssize_t n
    cdef int overflow
    if PyUnicode_CheckExact(item):
        PyUnicode_AsUTF8AndSize(item, &n)
    elif PyBytes_CheckExact(item):
        n = PyBytes_GET_SIZE(item)
    elif PyLong_CheckExact(item):
        PyLong_AsLongLongAndOverflow(item, &overflow)
        if overflow:
            raise ValueError("a frame int must fit in 64 bits (signed)")
        return 9
    elif PyFloat_CheckExact(item):
        return 9
    elif item is None:
        return 1
    else:
        raise TypeError(
            f"a frame item must be None, int, float, str or bytes, not {type(item).__name__}")
    if n > _MAX_LENGTH:
        raise ValueError(f"a frame item of {n} bytes does not fit a 4-byte length")
    return 5 + n


cdef unsigned char* _write_item(unsigned char* out, object item):
    cdef Py_ssize_t n
    cdef const char* src
    cdef _Bits bits
    if PyUnicode_CheckExact(item) or PyBytes_CheckExact(item):
        if PyBytes_CheckExact(item):
            out[0] = _TAG_BYTES
            src, n = PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item)
        else:
            out[0] = _TAG_STR
            src = PyUnicode_AsUTF8AndSize(item, &n)  # cached by the sizing pass
        _write_u32(out + 1, <uint32_t>n)
        memcpy(out + 5, src, n)
        return out + 5 + n
    if PyLong_CheckExact(item):
        out[0] = _TAG_INT
        bits.signed = <int64_t>item  # in range: the sizing pass checked
        _write_u64(out + 1, bits.bits)
        return out + 9
    if PyFloat_CheckExact(item):
        out[0] = _TAG_FLOAT
        bits.number = PyFloat_AS_DOUBLE(item)
        _write_u64(out + 1, bits.bits)
        return out + 9
    out[0] = _TAG_NONE
    return out + 1


def encode_frame(message):
    cdef Py_ssize_t i, count, size = 0
    cdef bytes frame
    cdef unsigned char* out
    if type(message) is not list:
        raise TypeError(f"a frame message must be a list, not {type(message).__name__}")
    count = PyList_GET_SIZE(message)
    for i in range(count):
        size += _item_size(<object>PyList_GET_ITEM(message, i))
    if size > _MAX_LENGTH:
        raise ValueError(f"a frame body of {size} bytes does not fit a 4-byte length")
    # One allocation; every item is written in place.
    frame = PyBytes_FromStringAndSize(NULL, size + 4)
    out = <unsigned char*>PyBytes_AS_STRING(frame)
    _write_u32(out, <uint32_t>size)
    out += 4
    for i in range(count):
        out = _write_item(out, <object>PyList_GET_ITEM(message, i))
    return frame


cdef object _corrupt(str reason, Py_ssize_t at):
    return ValueError(f"a corrupt frame: {reason} at byte {at} of its body")


cdef list _decode_body(const unsigned char* body, Py_ssize_t end):
    cdef list items = []
    cdef Py_ssize_t pos = 0
    cdef uint32_t size
    cdef unsigned char tag
    cdef _Bits bits
    while pos < end:
        tag = body[pos]
        if tag == _TAG_NONE:
            items.append(None)
            pos += 1
        elif tag == _TAG_STR or tag == _TAG_BYTES:
            if end - pos < 5:
                raise _corrupt("an item runs past the end", pos)
            size = _read_u32(body + pos + 1)
            if end - pos - 5 < <Py_ssize_t>size:
                raise _corrupt("an item runs past the end", pos)
            if tag == _TAG_STR:
                items.append(PyUnicode_DecodeUTF8(<const char*>body + pos + 5, size, NULL))
            else:
                items.append(PyBytes_FromStringAndSize(<const char*>body + pos + 5, size))
            pos += 5 + <Py_ssize_t>size
        elif tag == _TAG_INT or tag == _TAG_FLOAT:
            if end - pos < 9:
                raise _corrupt("an item runs past the end", pos)
            bits.bits = _read_u64(body + pos + 1)
            if tag == _TAG_INT:
                items.append(PyLong_FromLongLong(bits.signed))
            else:
                items.append(PyFloat_FromDouble(bits.number))
            pos += 9
        else:
            raise _corrupt(f"unknown item tag 0x{tag:02x}", pos)
    return items


cdef Py_ssize_t _SHRINK_ABOVE = 1024 * 1024


cdef class FrameDecoder:
    """Whole frames straight from each chunk; only the unfinished tail of a
    chunk (one incomplete frame) is copied into ``_pending``, so every byte is
    copied at most once before it is decoded and nothing is ever compacted."""

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
            size = _read_u32(self._pending)
            if size > self._max:
                raise self._too_big(size)
            total = 4 + <Py_ssize_t>size
            take = min(total - self._len, n - pos)
            self._append(p + pos, take)
            pos += take
            if self._len < total:
                return messages
            # On a decode error the frame stays pending, as in the twin.
            messages.append(_decode_body(self._pending + 4, size))
            self._release()
        try:
            while n - pos >= 4:
                size = _read_u32(p + pos)
                if size > self._max:
                    raise self._too_big(size)
                if n - pos - 4 < <Py_ssize_t>size:
                    break
                messages.append(_decode_body(p + pos + 4, size))
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
# SlidingWindow, in a file of its own (inlined here by Cython: one extension).
include "_fast_window.pxi"
