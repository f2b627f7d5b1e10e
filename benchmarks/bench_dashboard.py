"""The dashboard's job list at scale: render the first page (50 jobs) of
the completed jobs of a queue holding 100,000, through the ASGI app in
process (auth, ZRANGE by rank, one pipeline of HGETALLs, the HTML template).

The 100,000 jobs are written with a plain pipeline that mirrors finished
hashes (``tests/dashboard_data.py``), not run through a worker. The time per
render is recorded; nothing about it is asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.conftest import QueueFactory
from sandboxq.dashboard import app
from tests.asgi_client import Client
from tests.dashboard_data import fill_completed

JOBS = 100_000
TOKEN = "benchmark-token-0123456789"


def test_job_list_first_page_of_100k_completed(
    benchmark: Any,
    queues: QueueFactory,
    redis_server: Any,
    record_summary: Callable[[str, str], None],
) -> None:
    queue = queues.new()
    fill_completed(queue, JOBS, batch=10_000)
    queue.add("ok")  # a queue's events stream exists as soon as it is used
    application = app(redis_server.url, token=TOKEN, queues=[queue.name])
    client = Client(application).bearer(TOKEN)
    path = f"/queues/{queue.name}?state=completed&page=1"

    def render() -> int:
        reply = client.get(path)
        assert reply.status == 200
        return len(reply.body)

    size = benchmark.pedantic(render, rounds=50, iterations=1, warmup_rounds=2)
    assert size > 0
    application.client.close()
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    median = benchmark.stats.stats.median
    record_summary(
        "dashboard job list, page 1 of 100,000 completed",
        f"{median * 1000:.2f} ms per render (median)",
    )
