"""The per-minute counters workers write for the dashboard's charts
(sandboxq/stats.py): a real worker counts each settled job by outcome and
run time, samples the queue's depth, and sends them inside steps it sends
anyway, into hashes that expire."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from sandboxq import Queue
from sandboxq.stats import (
    BUCKETS_MS,
    RETENTION_SECONDS,
    MinuteCounts,
    bucket,
    decode,
    flush_commands,
    minute_of,
    percentile,
    summarize,
)
from sandboxq.worker.broker import Broker
from sandboxq.worker.settings import WorkerSettings
from tests.worker_harness import WorkerProcess, wait_for_jobs, wait_until


def stats_hashes(client: redis.Redis, queue: Queue) -> dict[str, dict[str, int]]:
    keys = sorted(client.scan_iter(match=queue.keys.stats(0)[: -len("0")] + "*"))
    return {k.decode(): decode(client.hgetall(k)) for k in keys}


def totals(hashes: dict[str, dict[str, int]]) -> dict[str, int]:
    summed: dict[str, int] = {}
    for fields in hashes.values():
        for field, n in fields.items():
            if field not in ("waiting", "active"):
                summed[field] = summed.get(field, 0) + n
    return summed


@pytest.mark.timeout(60)
def test_a_worker_counts_settled_jobs_per_minute_with_an_expiry(
    queue: Queue, client: redis.Redis, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker("--lease", "2", procs=1)
    ids = [queue.add("ok", {"n": i}).id for i in range(5)]
    ids += [queue.add("raise_error", {"n": i}).id for i in range(2)]
    wait_for_jobs(queue, ids)

    def counted() -> dict[str, int] | None:
        summed = totals(stats_hashes(client, queue))
        return summed if summed.get("completed") == 5 and summed.get("failed") == 2 else None

    summed = wait_until(counted, 30, "the counts in the stats hashes")
    runs = {f: n for f, n in summed.items() if f.startswith("rt:")}
    assert sum(n for f, n in runs.items() if f.endswith(":ok")) == 5
    assert sum(n for f, n in runs.items() if f.endswith(":raise_error")) == 2
    hashes = wait_until(
        lambda: (
            (found := stats_hashes(client, queue))
            and any("waiting" in f and "active" in f for f in found.values())
            and found
        ),
        30,
        "a depth sample",
    )
    for key in hashes:
        ttl = client.ttl(key)
        assert 0 < ttl <= RETENTION_SECONDS


def test_buckets_and_percentiles() -> None:
    assert bucket(0) == 0 and bucket(1) == 0 and bucket(2) == 1 and bucket(3) == 2
    assert bucket(10**9) == len(BUCKETS_MS)
    assert percentile({}, 0.5) is None
    histogram = {bucket(8): 90, bucket(400): 10}  # 90 runs <= 10 ms, 10 <= 500 ms
    assert percentile(histogram, 0.5) == 10.0 and percentile(histogram, 0.95) == 500.0
    counts = MinuteCounts()
    counts.note("q", 100, "resize", "completed", 8)
    counts.note("q", 100, "resize", "completed", 9)
    counts.note("q", 101, "resize", "failed", 400)
    summary = summarize(
        [100, 101],
        [{"completed": 2, "rt:3:resize": 2, "waiting": 4}, {"failed": 1, "rt:8:resize": 1}],
    )
    assert [p["completed"] for p in summary["points"]] == [2, 0]
    assert summary["points"][0]["waiting"] == 4 and summary["points"][1]["waiting"] is None
    assert summary["run_times"]["resize"] == {"runs": 3, "p50_ms": 10.0, "p95_ms": 500.0}
    assert dict(counts.take()) == {
        ("q", 100, "completed"): 2,
        ("q", 100, "rt:3:resize"): 2,
        ("q", 101, "failed"): 1,
        ("q", 101, "rt:8:resize"): 1,
    }


def test_the_counts_never_make_a_step_of_their_own(redis_url: str, queue: Queue) -> None:
    broker = Broker(WorkerSettings(url=redis_url), [queue.name], "stats-token")
    try:
        broker.clock.measured = True
        broker.setup.done = True
        far = 1e12
        broker.timers.next_renew = broker.timers.next_recover = far
        broker.schedules.next_check = broker.timers.next_cancel_check = far
        broker.windows.resync.clear()
        broker.timers.next_stats_flush = 0.0  # due
        broker.stats.note(queue.name, 100, "resize", "completed", 12)
        assert broker.start_round(free_slots=0) is None
        assert not broker.in_flight  # nothing else due: no step, the counts wait
        assert broker.stats
        # A step that goes anyway (a log line to report) carries them.
        broker.report(queue.name, "1", "log", "a line")
        broker.start_round(free_slots=0)
        sent: Any = broker.round_trip.current
        kinds = [c.kind for c in sent.commands]
        assert kinds[0] == "report" and kinds.count("stats") == 3  # 2 HINCRBY, 1 EXPIRE
        assert not broker.stats
    finally:
        broker.close()


def test_obliterate_deletes_the_counters(queue: Queue, client: redis.Redis) -> None:
    now = minute_of(int(time.time() * 1000))
    counts = {(queue.name, now - back, "completed"): 1 for back in (0, 1, 60 * 24 * 6)}
    for command in flush_commands({queue.name: queue.keys}, counts):
        client.execute_command(*command)
    assert len(stats_hashes(client, queue)) == 3
    queue.obliterate()
    assert stats_hashes(client, queue) == {}
