"""Byte caps on the text a job leaves in Redis.

A job can log, report progress and fail with text of any size; Redis keeps
all of it (on the job, in its log and in the queue's event stream) until
retention removes the job. Each piece is capped here, in bytes of UTF-8,
and cut with a visible marker instead of being refused, so a runaway job
still reports what it did. The child clips before sending (less to copy
through the pipe) and the parent clips again, because a child's frames are
untrusted input.

What one job can leave, at most: 1,000 log lines of 8 KiB (8 MiB), one
progress value of 4 KiB, an error of 8 KiB and a traceback of 32 KiB, plus
its result (``max_result_bytes``, 1 MiB by default; a bigger result fails
the job instead, because a cut result would be wrong data). Events copy at
most 1 KiB of an error (``lua/include/common.lua``) and 4 KiB of progress;
a ``completed`` event carries a result of up to 4 KiB and only the size of a
bigger one. Durable steps add at most 1,000 results of 64 KiB each.
"""

from __future__ import annotations

import re

import orjson

#: One log line (``job.log``); the log keeps the newest MAX_LOG_LINES.
MAX_LOG_LINE_BYTES = 8 * 1024
MAX_LOG_LINES = 1000

#: A progress value, as JSON (``job.update_progress``).
MAX_PROGRESS_BYTES = 4 * 1024

#: A failed attempt's error message and traceback.
MAX_ERROR_BYTES = 8 * 1024
MAX_TRACEBACK_BYTES = 32 * 1024

#: A job's result, as JSON, unless the worker sets another limit.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024

#: A durable step (``job.step``): its key, its result as JSON, and how many
#: one job records. A result over the limit fails the step, recording nothing.
MAX_STEP_KEY_BYTES = 200
MAX_STEP_RESULT_BYTES = 64 * 1024
MAX_STEPS = 1000


def _marker(total: int) -> str:
    return f" …[truncated: {total} bytes in all]"


def clip_text(text: str, limit: int, *, keep_tail: bool = False) -> str:
    """``text`` as valid UTF-8 of at most ``limit`` bytes. Longer text keeps
    its start (and with ``keep_tail`` its end too, where a traceback names
    the error) around a marker giving the original size. Lone surrogates,
    which UTF-8 cannot carry, become '?'."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "replace")
        text = raw.decode()
    if len(raw) <= limit:
        return text
    marker = _marker(len(raw))
    room = limit - len(marker.encode())
    if room <= 0:  # no room for the marker even
        return raw[: max(limit, 0)].decode("utf-8", "ignore")
    if keep_tail:
        head, tail = room // 2, room - room // 2
        # "ignore" drops a character cut in half at either edge.
        return (
            raw[:head].decode("utf-8", "ignore")
            + marker
            + (raw[-tail:].decode("utf-8", "ignore") if tail else "")
        )
    return raw[:room].decode("utf-8", "ignore") + marker


def clip_json(raw: str, limit: int) -> str:
    """A JSON text of at most ``limit`` bytes: ``raw`` itself when it fits,
    else a JSON string holding its clipped text. Quoting that text escapes
    its quotes and backslashes, so clip again by what went over (a few
    rounds at most: escaping at most doubles a text)."""
    if len(raw.encode()) <= limit:
        return raw
    budget = limit - 2  # the quotes
    while budget > 0:
        out = orjson.dumps(clip_text(raw, budget)).decode()
        over = len(out.encode()) - limit
        if over <= 0:
            return out
        budget -= over
    return '""'[: max(limit, 0)]


#: Characters that would steer a terminal (C0 and C1 controls, DEL, and the
#: bidirectional overrides that reorder what a line shows).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with those characters shown as escapes (``\\x1b``): ids, names
    and errors come from whoever added the job, and must not move the cursor,
    recolour the screen or hide what follows."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
