"""Durable steps as a job's hash holds them (``lua/step.lua`` writes them).

Each recorded step is a field ``step:<key>`` whose value is ``<n>:<result>``:
its place in the job's order, then its result as JSON. They live in the
job's own hash, so a fetch brings them along with the job and retention
deletes them with it.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

#: The prefix of a step's field in the job's hash.
FIELD_PREFIX = "step:"

#: The job field counting its steps (step.lua); only jobs with steps have it.
COUNT_FIELD = "step_count"


def steps_json(fields: dict[str, Any]) -> bytes | None:
    """The job's recorded steps as one JSON object ``{key: result}``, for
    the child that runs it; None when it has none. Built from the stored
    JSON texts without parsing them: the worker parent never parses a
    payload."""
    if COUNT_FIELD not in fields:
        return None
    parts = [
        orjson.dumps(name[len(FIELD_PREFIX) :]) + b":" + value.partition(":")[2].encode()
        for name, value in fields.items()
        if name.startswith(FIELD_PREFIX)
    ]
    return b"{" + b",".join(parts) + b"}"


def record_in(fields: dict[str, Any], key: str, result: str, max_steps: int) -> str:
    """What lua/step.lua does to a job's hash, done to a dict of its fields
    (EagerQueue keeps its jobs in memory); the same statuses."""
    field = FIELD_PREFIX + key
    if field in fields:
        return "known"
    count = int(fields.get(COUNT_FIELD, 0))
    if count >= max_steps:
        return "full"
    fields[COUNT_FIELD] = count + 1
    fields[field] = f"{count + 1}:{result}"
    return "recorded"


def recorded(fields: dict[str, Any]) -> dict[str, Any]:
    """The job's recorded steps, ``{key: result}`` in the order they were
    recorded. A step field something else wrote, that does not hold this
    format, is shown as its text, after the others: a job is always
    viewable (running it fails instead, saying why)."""
    found = []
    for name, value in fields.items():
        if name.startswith(FIELD_PREFIX) and isinstance(value, str):
            place, _, result = value.partition(":")
            try:
                found.append((int(place), name[len(FIELD_PREFIX) :], orjson.loads(result)))
            except ValueError:  # orjson.JSONDecodeError is one too
                found.append((sys.maxsize, name[len(FIELD_PREFIX) :], value))
    return {key: result for _place, key, result in sorted(found, key=lambda s: s[0])}
