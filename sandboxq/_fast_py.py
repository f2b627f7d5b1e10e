"""Pure-Python twin of ``sandboxq._fast``: the same names, the same results.

``sandboxq.fast`` chooses between the two; nothing else imports either one.
Keep every function here and in ``_fast.pyx`` in step: the tests run both
against the same cases (``tests/test_fast.py``).
"""

from __future__ import annotations

from typing import Any

import orjson

# How each job-hash field is decoded. Unknown fields decode as text, so an
# older reader survives fields a newer writer added.
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
}


def dump_json(value: Any, what: str, max_bytes: int) -> bytes:
    """Serialize ``value`` for Redis; a clear TypeError or ValueError otherwise."""
    try:
        raw = orjson.dumps(value)
    except TypeError as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None
    if len(raw) > max_bytes:
        raise ValueError(
            f"{what} is {len(raw)} bytes as JSON, over the limit of "
            f"{max_bytes} bytes (max_payload_bytes)"
        )
    return raw


def _decode(field: bytes, value: bytes) -> Any:
    kind = FIELD_KINDS.get(field, _TEXT)
    if kind == _JSON:
        return orjson.loads(value)
    if kind == _INT:
        return int(value)
    if kind == _SECONDS:
        return int(value) / 1000.0
    return value.decode()


def decode_job_flat(flat: list[bytes]) -> dict[str, Any]:
    """A job hash as Lua returns it (``[field, value, ...]``) → typed fields."""
    if len(flat) % 2:
        raise ValueError(f"a job hash needs field/value pairs, got {len(flat)} items")
    return {flat[i].decode(): _decode(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)}


def decode_job_mapping(mapping: dict[bytes, bytes]) -> dict[str, Any]:
    """A job hash as HGETALL returns it (a dict) → typed fields."""
    return {field.decode(): _decode(field, value) for field, value in mapping.items()}


def decode_fetched(rows: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """fetch.lua's ``[id, hash, id, hash, ...]`` → ``[(id, fields), ...]``."""
    if len(rows) % 2:
        raise ValueError(f"fetched rows need id/hash pairs, got {len(rows)} items")
    return [(rows[i].decode(), decode_job_flat(rows[i + 1])) for i in range(0, len(rows), 2)]
