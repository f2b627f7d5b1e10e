"""JSON values on their way to and from Redis: orjson only, never pickle.

Writing: :func:`dump_json` serializes a payload and checks its size, with an
error that names what was being written. It is plain Python on purpose: orjson
does the work, and a compiled wrapper measured no faster (benchmarks/README.md).

Reading: the job-hash codec (``sandboxq.fast``) leaves JSON fields as the bytes
Redis holds, because the worker parent only forwards them to a child. What
reads them decodes them here, once.
"""

from __future__ import annotations

from typing import Any

import orjson

#: Job-hash fields holding JSON (``sandboxq.fast`` keeps them as bytes).
JSON_FIELDS = ("data", "children", "result", "progress", "backoff")


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


def load_json(raw: bytes | None) -> Any:
    """A JSON field's value; a missing field (None) stays None."""
    return None if raw is None else orjson.loads(raw)


def with_json_decoded(fields: dict[str, Any]) -> dict[str, Any]:
    """Decoded job-hash fields with their JSON fields parsed too. A field
    that is not valid JSON (something other than sandboxq wrote it) comes
    back as its raw text, so the job can still be looked at, retried or
    removed; running it fails, saying why."""
    out = dict(fields)
    for name in JSON_FIELDS:
        if name in out:
            try:
                out[name] = orjson.loads(out[name])
            except orjson.JSONDecodeError:
                out[name] = out[name].decode(errors="replace")
    return out
