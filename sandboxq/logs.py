"""Worker logging: one line per job event, as text or JSON.

Job events carry ``job_id``, ``job_name``, ``queue``, ``attempt``, ``pid``
and ``duration_ms`` in ``record.fields``; both formats print them.

Names, ids and errors come from whoever added the job (or wrote to Redis):
a line shows at most MAX_SHOWN characters of the message and of each value,
and the text format shows control characters as escapes, so no value can
fake a line of its own or flood the log.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from sandboxq.caps import terminal_safe

LOGGER_NAME = "sandboxq"
log = logging.getLogger(LOGGER_NAME)

#: The most characters a log line shows of its message, and of each value.
MAX_SHOWN = 2000


def clipped(value: Any) -> Any:
    """A value as a line shows it: text longer than MAX_SHOWN is cut."""
    if isinstance(value, str) and len(value) > MAX_SHOWN:
        return f"{value[:MAX_SHOWN]}…[{len(value)} characters]"
    return value


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname} {terminal_safe(clipped(record.getMessage()))}"
        fields: dict[str, Any] = getattr(record, "fields", {})
        if fields:
            line += " " + " ".join(
                f"{k}={terminal_safe(clipped(str(v)))}" for k, v in fields.items()
            )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "msg": clipped(record.getMessage()),
        }
        entry.update((k, clipped(v)) for k, v in getattr(record, "fields", {}).items())
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup(log_format: str = "text", level: str | int = "INFO") -> None:
    """Send sandboxq's log lines to stderr in the chosen format."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper() if isinstance(level, str) else level)
    log.propagate = False


def always(message: str, **fields: Any) -> None:
    """An INFO line printed whatever the log level (the ready line, which
    supervisors and tests wait for)."""
    record = log.makeRecord(
        log.name,
        logging.INFO,
        "(sandboxq)",
        0,
        message,
        (),
        None,
        extra={"fields": fields} if fields else None,
    )
    log.handle(record)  # handle() skips the level check, not the handlers


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, message, extra={"fields": fields})
