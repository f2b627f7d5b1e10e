"""Per-queue, per-minute counters for the dashboard's charts.

A worker parent counts each settled job in memory (:class:`MinuteCounts`,
one dict increment per field) and flushes the sums into the rounds it sends
anyway, at most every :data:`FLUSH_SECONDS`: ``HINCRBY`` and ``EXPIRE`` on
``sq:{queue}:stats:<minute>`` (minutes since the epoch), never a round trip
of its own. Each hash holds:

- ``<outcome>``: jobs settled that minute (``completed``, ``failed``,
  ``retry``, ``cancelled``...);
- ``rt:<bucket>:<name>``: jobs named ``name`` whose run took at most
  ``BUCKETS_MS[bucket]`` ms (and more than the bucket below), so p50/p95
  can be estimated;
- ``waiting``, ``active``: the queue's depth, sampled about once a minute by
  whichever worker is due (two workers writing the same minute is harmless).

The hashes expire after :data:`RETENTION_SECONDS` (7 days).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sandboxq.keys import QueueKeys

#: How long each minute's hash is kept.
RETENTION_SECONDS = 7 * 24 * 3600
#: A worker sends its counts at most this often (inside a step it sends anyway).
FLUSH_SECONDS = 5.0
#: How often a worker samples its queues' depth.
DEPTH_SECONDS = 60.0
#: The run-time buckets' upper bounds (ms), log-scale; one more bucket past
#: the last holds the longer runs.
BUCKETS_MS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000,
    60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000,
)  # fmt: skip
RUN_TIME_PREFIX = "rt:"
DEPTH_FIELDS = ("waiting", "active")


def minute_of(ms: int) -> int:
    """The minute (since the epoch) a time in ms falls in."""
    return ms // 60_000


def bucket(duration_ms: int) -> int:
    """The run-time bucket of a duration: the first bound it does not pass."""
    return bisect.bisect_left(BUCKETS_MS, duration_ms)


class MinuteCounts:
    """What a worker counted since its last flush: (queue, minute, field) → n."""

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, int, str], int] = defaultdict(int)

    def note(self, queue: str, minute: int, name: str, outcome: str, duration_ms: int) -> None:
        """A settled job: two dict increments."""
        counts = self.counts
        counts[(queue, minute, outcome)] += 1
        counts[(queue, minute, f"{RUN_TIME_PREFIX}{bucket(duration_ms)}:{name}")] += 1

    def __bool__(self) -> bool:
        return bool(self.counts)

    def take(self) -> dict[tuple[str, int, str], int]:
        """The counts so far, forgetting them (a failed flush gives them back)."""
        taken, self.counts = self.counts, defaultdict(int)
        return dict(taken)

    def give_back(self, taken: Mapping[tuple[str, int, str], int]) -> None:
        for field, n in taken.items():
            self.counts[field] += n


def flush_commands(
    keys: Mapping[str, QueueKeys], taken: Mapping[tuple[str, int, str], int]
) -> list[tuple[Any, ...]]:
    """``HINCRBY`` for each count, then one ``EXPIRE`` per hash touched."""
    commands: list[tuple[Any, ...]] = []
    touched: dict[str, None] = {}
    for (queue, minute, field), n in taken.items():
        key = keys[queue].stats(minute)
        commands.append(("HINCRBY", key, field, n))
        touched[key] = None
    commands += [("EXPIRE", key, RETENTION_SECONDS) for key in touched]
    return commands


def depth_commands(
    keys: QueueKeys, minute: int, waiting: int, active: int
) -> list[tuple[Any, ...]]:
    key = keys.stats(minute)
    return [("HSET", key, "waiting", waiting, "active", active), ("EXPIRE", key, RETENTION_SECONDS)]


# -- reading ---------------------------------------------------------------------------
def decode(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The run time (ms) under which ``fraction`` of the runs fall, as the
    upper bound of the bucket where it is reached (None: no runs)."""
    total = sum(histogram.values())
    if not total:
        return None
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= fraction * total:
            return float(BUCKETS_MS[index]) if index < len(BUCKETS_MS) else float("inf")
    return float("inf")


def summarize(
    minutes: Sequence[int], hashes: Sequence[Mapping[str, int]], per: int = 1
) -> dict[str, Any]:
    """Series over ``minutes`` (oldest first) from their hashes, ``per``
    minutes a point (sums of counts, the last depth sampled); run-time
    percentiles per job name over the whole span."""
    points: list[dict[str, Any]] = []
    histograms: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for start in range(0, len(minutes), per):
        point: dict[str, Any] = {
            "minute": minutes[start],
            "completed": 0,
            "failed": 0,
            "waiting": None,
            "active": None,
        }
        for fields in hashes[start : start + per]:
            for field, n in fields.items():
                if field.startswith(RUN_TIME_PREFIX):
                    index, _, name = field[len(RUN_TIME_PREFIX) :].partition(":")
                    histograms[name][int(index)] += n
                elif field in DEPTH_FIELDS:
                    point[field] = n
                elif field in ("completed", "failed"):
                    point[field] += n
        points.append(point)
    run_times = {
        name: {
            "runs": sum(h.values()),
            "p50_ms": percentile(h, 0.5),
            "p95_ms": percentile(h, 0.95),
        }
        for name, h in sorted(histograms.items())
    }
    return {"points": points, "run_times": run_times}


def span_minutes(now_minute: int, count: int) -> list[int]:
    return list(range(now_minute - count + 1, now_minute + 1))


def keys_of(keys: QueueKeys, minutes: Iterable[int]) -> list[str]:
    return [keys.stats(m) for m in minutes]
