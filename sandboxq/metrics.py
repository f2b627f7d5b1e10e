"""Prometheus metrics of a worker parent, and its health endpoints.

Children report only through the parent, so one process owns every number
and prometheus-client's multiprocess mode is not needed. The HTTP server
runs in a thread of the parent: /metrics, /healthz (liveness) and /readyz
(readiness) on one port.
"""

from __future__ import annotations

import platform
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from sandboxq import __version__, fast

#: Job-duration buckets, seconds: from no-op jobs to hour-long exports.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class QueueDepth:
    """A collector that reads each queue's counts at scrape time: ZCARDs in
    one round trip per queue, no scan, and no work for the parent loop."""

    def __init__(self, counts: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "sandboxq_queue_jobs", "Jobs in a queue, by state", labels=["queue", "state"]
        )
        try:
            per_queue = self.counts()
        except Exception:  # Redis is down: no sample rather than a failed scrape
            per_queue = {}
        for queue, counts in per_queue.items():
            for state, value in counts.items():
                family.add_metric([queue, state], value)
        yield family


class DeduplicatedAdds:
    """A collector that reads, at scrape time, how many adds each queue's
    dedupe windows held back: the counter the add script keeps in Redis
    (so it counts every producer's adds, not this worker's), one GET per
    queue."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "sandboxq_jobs_deduplicated",
            "Adds a dedupe window held back (the existing job was returned, or replaced)",
            labels=["queue"],
        )
        try:
            per_queue = self.counts()
        except Exception:  # Redis is down: no sample rather than a failed scrape
            per_queue = {}
        for queue, value in per_queue.items():
            family.add_metric([queue], value)
        yield family


class _Durations:
    """One series of the duration histogram: a count per bucket (the last
    one past every bound) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0


class SettledJobs:
    """Jobs this worker settled, by outcome, and how long they ran: tallied
    in plain dicts by the parent loop and turned into the two metric
    families when scraped. The loop pays a dict update and a bisect per job
    instead of prometheus-client's locked counter and histogram, which took
    about 7% of the parent's busy time on a drain of no-op jobs. The scrape
    runs in the HTTP thread: it copies each tally in one C call (atomic
    under the GIL) and derives the count from the buckets, so a histogram's
    count always matches its +Inf bucket."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], _Durations] = {}

    def record(self, queue: str, name: str, outcome: str, seconds: float) -> None:
        key = (queue, name, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        series = self.durations.get((queue, name))
        if series is None:
            series = self.durations[(queue, name)] = _Durations()
        # Prometheus buckets are "less or equal": the first bound >= seconds.
        series.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        series.total += seconds

    def collect(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily(
            "sandboxq_jobs",
            "Jobs settled by this worker, by outcome",
            labels=["queue", "name", "outcome"],
        )
        for key, count in list(self.outcomes.items()):
            jobs.add_metric(list(key), count)
        yield jobs
        duration = HistogramMetricFamily(
            "sandboxq_job_duration_seconds", "Time a job ran in a child", labels=["queue", "name"]
        )
        for (queue, name), series in list(self.durations.items()):
            counts, running, buckets = list(series.counts), 0, []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            duration.add_metric([queue, name], buckets, sum_value=series.total)
        yield duration


class WorkerMetrics:
    """Every metric family a worker exports, in a registry of its own."""

    def __init__(
        self,
        procs: int,
        active: Callable[[], int],
        counts: Callable[[], dict[str, dict[str, int]]],
        slots: int | None = None,
        deduplicated: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.settled_jobs = SettledJobs()
        r.register(self.settled_jobs)
        self.crashes = Counter(
            "sandboxq_child_crashes",
            "Children lost while running a job, by kind (exit, signal, timeout, memory)",
            ["kind"],
            registry=r,
        )
        self.stalled = Counter(
            "sandboxq_stalled_recoveries",
            "Jobs of dead workers this worker recovered, by result",
            ["queue", "result"],
            registry=r,
        )
        self.unknown_names = Counter(
            "sandboxq_unknown_job_names",
            "Jobs no handler of this worker runs (handed back, or failed after the grace)",
            ["queue"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "sandboxq_rate_limit_waits",
            "Fetches a limit held back (rate, concurrency, a paused group)",
            ["queue"],
            registry=r,
        )
        self.faults = Counter(
            "sandboxq_faults",
            "Bad input the worker's barriers caught, by queue and kind: corrupt_record (a job "
            "failed), bad_setting and queue_error (a queue paused), log_budget (a run's log "
            "lines dropped), foreign_writer (a process the handler forked wrote to the pipe)",
            ["queue", "kind"],
            registry=r,
        )
        self.paused_queues = Gauge(
            "sandboxq_queue_paused_by_fault",
            "1 while this worker does not fetch from the queue because of a fault",
            ["queue"],
            registry=r,
        )
        build = Gauge(
            "sandboxq_build_info",
            "Always 1: the release, whether the native extension runs (else the pure-Python "
            "twin) and the Python, as labels",
            ["version", "native", "python"],
            registry=r,
        )
        build.labels(
            __version__, str(fast.IMPLEMENTATION == "native").lower(), platform.python_version()
        ).set(1)
        pool = Gauge("sandboxq_pool_size", "Child processes this worker keeps", registry=r)
        pool.set(procs)
        slot_count = Gauge(
            "sandboxq_job_slots",
            "Jobs this worker may run at once: its children times --async-concurrency "
            "(a job of a sync handler takes a whole child)",
            registry=r,
        )
        slot_count.set(procs if slots is None else slots)
        busy = Gauge(
            "sandboxq_active_jobs",
            "Jobs running now (a child may run several async jobs at once)",
            registry=r,
        )
        busy.set_function(active)
        r.register(QueueDepth(counts))
        r.register(DeduplicatedAdds(deduplicated))

    def settled(self, queue: str, name: str, outcome: str, duration_ms: int) -> None:
        self.settled_jobs.record(queue, name, outcome, duration_ms / 1000.0)


def crash_kind(reason: str) -> str:
    """exit, signal, timeout or memory, from a child's failure reason."""
    if reason.startswith("timed out") or " timed out after " in reason:
        return "timeout"  # (a job whose task would not stop killed its child)
    if reason.startswith("memory limit"):
        return "memory"
    return "signal" if "killed by signal" in reason else "exit"


class Health:
    """What the health endpoints judge, written by the parent loop."""

    def __init__(
        self,
        *,
        tick_timeout: float,
        idle_timeout: float,
        redis_ok: Callable[[], bool],
        pool_up: Callable[[], bool],
        queues_empty: Callable[[], bool],
    ) -> None:
        self.tick_timeout = tick_timeout
        self.idle_timeout = idle_timeout
        self.redis_ok, self.pool_up, self.queues_empty = redis_ok, pool_up, queues_empty
        self.last_tick = time.monotonic()
        self.last_job = time.monotonic()

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def job_finished(self) -> None:
        self.last_job = time.monotonic()

    def liveness(self) -> tuple[bool, str]:
        """Alive: the loop ticked recently, and it finished a job recently or
        has nothing to do. (A Redis outage alone does not make it dead.)"""
        now = time.monotonic()
        if now - self.last_tick > self.tick_timeout:
            return False, f"the worker loop has not run for {now - self.last_tick:.1f}s"
        if now - self.last_job > self.idle_timeout:
            try:
                empty = self.queues_empty()
            except Exception:
                empty = True  # cannot tell while Redis is down: readiness reports that
            if not empty:
                return False, (
                    f"no job finished for {now - self.last_job:.0f}s while jobs are waiting"
                )
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if not self.pool_up():
            return False, "the pool is not up"
        try:
            reachable = self.redis_ok()
        except Exception as exc:
            return False, f"Redis: {exc}"
        return (True, "ok") if reachable else (False, "Redis did not answer")


def serve(metrics: WorkerMetrics, health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Start the HTTP server in a daemon thread; returns it (for shutdown())."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok, why = health.liveness() if self.path == "/healthz" else health.readiness()
                self._reply(200 if ok else 503, (why + "\n").encode(), "text/plain")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass  # scrapes every few seconds are not news

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="sandboxq-http", daemon=True).start()
    return server
