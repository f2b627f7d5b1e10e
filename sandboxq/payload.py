"""JSON values on their way to and from Redis: orjson only, never pickle.

Writing: :func:`dump_json` serializes a payload and checks its size, with an
error that names what was being written. It is plain Python on purpose: orjson
does the work, and a compiled wrapper measured no faster (benchmarks/README.md).

Reading: the job-hash codec (``sandboxq.fast``) leaves JSON fields as the bytes
Redis holds, because the worker parent only forwards them to a child. What
reads them decodes them here, once.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

#: Job-hash fields holding JSON (``sandboxq.fast`` keeps them as bytes).
JSON_FIELDS = ("data", "children", "result", "progress", "backoff")


def dump_json(value: Any, what: str, max_bytes: int) -> bytes:
    """Serialize ``value`` for Redis; a clear TypeError or ValueError otherwise."""
    raw = to_json(value, what)
    if len(raw) > max_bytes:
        raise ValueError(
            f"{what} is {len(raw)} bytes as JSON, over the limit of "
            f"{max_bytes} bytes (max_payload_bytes)"
        )
    return raw


def to_json(value: Any, what: str) -> bytes:
    """``value`` as JSON, refusing what JSON cannot hold (TypeError or
    ValueError naming ``what``). orjson writes NaN and infinities as null,
    which would store a different value than the one given: refuse them."""
    try:
        raw = orjson.dumps(value)
    except TypeError as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None
    # A non-finite float can only have become a null: look for one only then.
    if b"null" in raw and (where := non_finite_path(value)) is not None:
        raise ValueError(f"{what} holds {where}: JSON has no NaN or Infinity")
    return raw


def non_finite_path(value: Any) -> str | None:
    """Where a NaN or infinity in ``value`` is (``nan at ["a"][2]``),
    looking through dicts, lists and tuples; None if there is none."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{item} at {path or 'the top level'}"
        elif isinstance(item, dict):
            stack.extend((v, f"{path}[{k!r}]") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return None


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
