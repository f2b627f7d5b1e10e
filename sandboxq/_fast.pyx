# cython: language_level=3, boundscheck=False, wraparound=False
"""Native hot path: the same functions as ``sandboxq/_fast_py.py``, compiled.

Keep the two in step; ``tests/test_fast.py`` runs both on the same cases.
"""

import orjson

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


cdef inline object _decode(bytes field, bytes value):
    cdef object kind_obj = _KINDS.get(field)
    cdef int kind = _TEXT if kind_obj is None else <int>kind_obj
    if kind == _JSON:
        return _loads(value)
    if kind == _INT:
        return int(value)
    if kind == _SECONDS:
        return int(value) / 1000.0
    return value.decode()


def decode_job_flat(list flat):
    cdef dict out = {}
    cdef Py_ssize_t i, n = len(flat)
    cdef bytes field
    cdef str name
    if n % 2:
        raise ValueError(f"a job hash needs field/value pairs, got {n} items")
    for i in range(0, n, 2):
        field = <bytes?>flat[i]
        name = field.decode()  # before the value, as the twin does
        out[name] = _decode(field, <bytes?>flat[i + 1])
    return out


def decode_job_mapping(dict mapping):
    cdef dict out = {}
    cdef bytes field
    cdef str name
    for field, value in mapping.items():
        name = field.decode()  # before the value, as the twin does
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
