"""Command-line values: the argparse types of the ``sandboxq`` command,
each turning a text (``512M``, ``30s``, ``100/60s``, JSON...) into the value
the API takes, or a usage error naming the text."""

from __future__ import annotations

import argparse
import math
import re

import orjson

from sandboxq.options import rate_limit_fields

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``512M``, ``1.5G``, ``256MiB`` or plain bytes → bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M or 2G)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def parse_procs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--procs must be 'auto' or a number >= 1, got {text!r}")
    return value


def parse_async_concurrency(text: str) -> int:
    """``--async-concurrency``: a whole number from 1 to 1000 (the worker's
    own check, check_async_concurrency, says so)."""
    from sandboxq.worker.settings import check_async_concurrency

    try:
        return check_async_concurrency(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--async-concurrency must be a whole number of async jobs per child, "
            f"got {text!r}: {exc}"
        ) from None


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)?\s*$")


def parse_rate(text: str) -> tuple[int, float]:
    """``100/60s``, ``20/s``, ``5/2m``, ``1000/h`` → (max jobs, seconds)."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1 or (not match.group(2) and not match.group(3)):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (try 100/60s or 20/s)")
    amount = float(match.group(2) or 1)
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(3) or "s"]
    if amount * unit <= 0:
        raise argparse.ArgumentTypeError(f"the period of {text!r} must be > 0")
    rate = int(match.group(1)), amount * unit
    try:
        rate_limit_fields("rl", *rate)  # the bounds Queue.set_rate_limit checks
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return rate


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_SECONDS_PER = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``2h``, ``1d``, ``1w``, ``500ms`` or plain seconds → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (try 30s, 15m, 2h, 1d or 1w; plain numbers are seconds)"
        )
    return float(match.group(1)) * _SECONDS_PER[match.group(2) or "s"]


def parse_json(text: str) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not JSON: {exc} (quote it for the shell, e.g. --data '{{\"n\": 1}}')"
        ) from None


def parse_backoff(text: str) -> object:
    """``5`` or ``5s`` (fixed), ``exponential:2s``, or a JSON object as
    ``Backoff.parse`` takes it; checked here, so a bad one is a usage error."""
    from sandboxq.options import Backoff

    hint = f"not a backoff: {text!r} (try 5s, exponential:2s or a JSON object)"
    try:
        if text.lstrip().startswith("{"):
            spec = parse_json(text)
        else:
            kind, _, delay = text.rpartition(":")
            spec = {"type": kind or "fixed", "delay": parse_duration(delay)}
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(hint) from None
    try:
        return Backoff.parse(spec).to_dict()
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{hint}: {exc}") from None


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    return _whole_number(text, 1)
