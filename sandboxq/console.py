"""How the command line prints: aligned tables, JSON, times and
durations, and errors on stderr with the exit code that goes with them.
Shared by the admin commands (:mod:`sandboxq.admin`), ``sandboxq dev``
(:mod:`sandboxq.dev_redis`) and :mod:`sandboxq.cli`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from sandboxq.caps import terminal_safe

#: Exit codes: done, the action could not be done, bad input or no Redis.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def print_json(value: Any, *, compact: bool = False) -> None:
    option = 0 if compact else orjson.OPT_INDENT_2
    print(orjson.dumps(value, option=option).decode(), flush=True)


def cell(value: Any) -> str:
    """One table cell: ``-`` for nothing, yes/no, floats to 2 decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return terminal_safe(str(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table_lines(rows: Sequence[Sequence[Any]], headers: Sequence[str] = ()) -> list[str]:
    """Rows as aligned columns (two spaces apart); numeric columns align right."""
    grid = ([list(headers)] if headers else []) + [[cell(v) for v in row] for row in rows]
    if not grid:
        return []
    columns = range(len(grid[0]))
    widths = [max(len(line[i]) for line in grid) for i in columns]
    right = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in columns]
    return [
        "  ".join(
            text.rjust(widths[i]) if right[i] else text.ljust(widths[i])
            for i, text in enumerate(line)
        ).rstrip()
        for line in grid
    ]


def print_table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str] = (), indent: str = ""
) -> None:
    for line in table_lines(rows, headers):
        print(indent + line)


def format_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def format_duration(seconds: float) -> str:
    """The two largest units: ``42s``, ``5m 3s``, ``2h 0m``, ``3d 4h``."""
    left = max(int(seconds), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, left = divmod(left, size)
        if amount or parts:
            parts.append(f"{amount}{unit}")
    return " ".join(parts[:2]) or "0s"


def first_line(text: str | None, width: int) -> str | None:
    if text is None:
        return None
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def print_section(title: str, lines: Iterable[str]) -> None:
    print(f"\n{terminal_safe(title)}")
    for line in lines:
        print(f"  {terminal_safe(line)}")


def pretty_json(value: Any) -> list[str]:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode().splitlines()


def fail(message: str, code: int, as_json: bool = False) -> int:
    """Report an error on stderr, on one line (as JSON with ``--json``);
    return the exit code."""
    line = " ".join(message.split())
    if as_json:
        print(orjson.dumps({"error": line, "code": code}).decode(), file=sys.stderr)
    else:
        print(f"sandboxq: {terminal_safe(line)}", file=sys.stderr)
    return code
