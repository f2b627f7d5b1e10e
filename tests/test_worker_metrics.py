"""Prometheus metrics and health endpoints of a real worker process."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from platform import python_version

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import sandboxq
from sandboxq import IMPLEMENTATION, Queue
from sandboxq.metrics import DURATION_BUCKETS, Health, SettledJobs
from tests.faults import RedisVersion
from tests.worker_harness import WorkerProcess, wait_for_job, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(port, "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, metric: str, /, **labels: str) -> float:
    return found.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_metrics_families_have_live_values_during_a_run(
    queue: Queue, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a job a dead worker left behind, and a rate limit of one start a minute
    stranded = queue.add("ok", 1)
    queue.scripts.fetch(queue.keys, 1_000, 1, "dead-worker", 1)
    port = free_port()
    worker = start_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1", procs=2)
    wait_for_job(queue, stranded.id, "completed", timeout=10)
    # When jobs complete, fail, crash, time out, and meet the rate limit
    done = [
        queue.add("ok", 2),
        queue.add("raise_error", 3),
        queue.add("exit_code", 3),
        queue.add("hang", timeout=0.3),
    ]
    for job in done:
        wait_for_job(queue, job.id, ("completed", "failed"), timeout=15)
    queue.set_rate_limit(1, 60)
    held = [queue.add("ok", 4), queue.add("ok", 5)]
    wait_for_job(queue, held[0].id, "completed", timeout=10)

    def rate_limit_seen() -> dict | None:
        found = samples(port)
        waits = value(found, "sandboxq_rate_limit_waits_total", queue=queue.name)
        return found if waits >= 1 else None

    found = wait_until(rate_limit_seen, timeout=10, what="a rate-limit wait")
    # Then every family shows it
    q = queue.name
    assert value(found, "sandboxq_jobs_total", queue=q, name="ok", outcome="completed") == 3
    assert value(found, "sandboxq_jobs_total", queue=q, name="raise_error", outcome="failed") == 1
    assert value(found, "sandboxq_job_duration_seconds_count", queue=q, name="ok") == 3
    assert value(found, "sandboxq_child_crashes_total", kind="exit") == 1
    assert value(found, "sandboxq_child_crashes_total", kind="timeout") == 1
    assert value(found, "sandboxq_stalled_recoveries_total", queue=q, result="requeued") == 1
    assert value(found, "sandboxq_pool_size") == 2
    native = str(IMPLEMENTATION == "native").lower()
    build = {"version": sandboxq.__version__, "native": native, "python": python_version()}
    assert value(found, "sandboxq_build_info", **build) == 1
    implementation = "native extension" if native == "true" else "pure-Python twin ("
    worker.wait_for_line(re.escape(f"sandboxq {sandboxq.__version__}, {implementation}"))
    assert value(found, "sandboxq_active_jobs") == 0
    assert value(found, "sandboxq_queue_jobs", queue=q, state="waiting") == 1  # held back
    assert value(found, "sandboxq_queue_jobs", queue=q, state="failed") == 3
    assert worker.running()


def test_health_endpoints_are_green_when_all_is_well(
    queue: Queue, start_worker: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    start_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ok\n")
    assert get(port, "/nope")[0] == 404


@pytest.mark.slow
def test_a_frozen_redis_turns_readiness_red_while_the_loop_keeps_turning(
    tmp_path: Path, queue: Queue, redis_version: RedisVersion
) -> None:
    # Given a worker on its own Redis, judged stuck after 1 s without a loop pass
    server = redis_version.server(tmp_path / "redis").start()
    port = free_port()
    worker = WorkerProcess(
        queue.name,
        server.url,
        [
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            "--liveness-tick-timeout",
            "1",
        ],
    )
    try:
        worker.start()
        assert get(port, "/healthz")[0] == 200
        # When Redis freezes (SIGSTOP)
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        # Then readiness turns red, while the loop, which never waits for
        # Redis, keeps turning: liveness stays green past the 1 s tick timeout
        _status, why = wait_until(
            lambda: (reply := get(port, "/readyz"))[0] == 503 and reply, 10, "readiness red"
        )
        assert "Redis" in why
        time.sleep(2.0)  # the fault lasting past the tick timeout, not a readiness wait
        assert get(port, "/healthz")[0] == 200
        # And when it thaws, both turn green again
        server.process.send_signal(signal.SIGCONT)
        wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=15, what="liveness green")
        wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=15, what="readiness green")
        # When Redis is gone, readiness is red but the worker is alive (it reconnects)
        server.stop()
        wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10, what="readiness red")
        assert get(port, "/healthz")[0] == 200
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        worker.cleanup()
        server.stop()


def test_liveness_fails_when_jobs_wait_but_none_finishes(
    queue: Queue, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given one child stuck in a job that never ends, and a job waiting behind it
    port = free_port()
    start_worker(
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--liveness-idle-timeout",
        "1",
        procs=1,
    )
    stuck = queue.add("hang")
    wait_for_job(queue, stuck.id, "active", timeout=10)
    queue.add("ok", 1)
    # Then after the idle timeout, liveness says why it is red
    wait_until(lambda: get(port, "/healthz")[0] == 503, timeout=10, what="liveness red")
    assert "no job finished" in get(port, "/healthz")[1]


def test_liveness_turns_red_when_the_loop_stops_turning() -> None:
    # Given the health of a loop judged stuck after 1 s without a pass
    health = Health(
        tick_timeout=1.0,
        idle_timeout=600.0,
        redis_ok=lambda: True,
        pool_up=lambda: True,
        queues_empty=lambda: True,
    )
    health.tick()
    assert health.liveness() == (True, "ok")
    # When its last pass was 5 s ago (the loop stuck in a call)
    health.last_tick -= 5.0
    # Then liveness is red, saying for how long
    alive, why = health.liveness()
    assert not alive and why.startswith("the worker loop has not run for 5.")


def test_settled_jobs_export_what_prometheus_client_would() -> None:
    # Given the worker's tallies and prometheus-client's own counter and
    # histogram, fed the same settled jobs (durations on, between and past
    # the bucket bounds, in two series)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tallies = SettledJobs()
    ours.register(tallies)
    jobs = Counter("sandboxq_jobs", "x", ["queue", "name", "outcome"], registry=theirs)
    duration = Histogram(
        "sandboxq_job_duration_seconds",
        "x",
        ["queue", "name"],
        buckets=DURATION_BUCKETS,
        registry=theirs,
    )
    settled = [("q", "a", "completed", 0.0), ("q", "a", "completed", 0.005)]
    settled += [("q", "a", "failed", 0.0051), ("q", "b", "completed", 7200.0)]
    settled += [("q", "a", "completed", 1.0), ("q", "b", "retrying", 0.3)]
    for queue, name, outcome, seconds in settled:
        tallies.record(queue, name, outcome, seconds)
        jobs.labels(queue, name, outcome).inc()
        duration.labels(queue, name).observe(seconds)

    # When both are scraped
    def parsed(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        }

    # Then every sample matches: counts, buckets, sums
    expected = parsed(theirs)
    assert parsed(ours) == expected
    assert expected[("sandboxq_job_duration_seconds_count", (("name", "a"), ("queue", "q")))] == 4
