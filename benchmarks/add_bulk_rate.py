"""Time ``Queue.add_bulk`` with whichever sandboxq comes first on ``sys.path``.

``bench_enqueue.py::test_add_bulk_against_baseline`` runs this script in a
subprocess once with ``PYTHONPATH`` set to this checkout and once with it
set to another (``$SANDBOXQ_BENCH_BASELINE``), alternating, to compare the
two trees' ``add_bulk`` on the same Redis::

    PYTHONPATH=TREE SANDBOXQ_NO_EXTENSIONS=1 python benchmarks/add_bulk_rate.py URL ROUNDS

Run by path, not with ``-m``: the script's own directory goes first on
``sys.path``, and it holds no ``sandboxq``, so ``PYTHONPATH`` decides which
tree is imported. It uses only what every version of the API has
(``Queue(name, connection=...)``, ``add_bulk``, ``counts``, ``obliterate``)
and prints one JSON object: the ``sandboxq`` it imported and the seconds of
each timed round. ``bench_enqueue.py`` imports ``tiny_job`` and
``BULK_JOBS`` from here, so both time the same jobs.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import orjson
import redis

#: Jobs per ``add_bulk`` call (ten script calls of 1,000).
BULK_JOBS = 10_000


def tiny_job(n: int) -> dict[str, Any]:
    return {"name": "tiny", "data": {"n": n}}


def time_rounds(url: str, rounds: int) -> list[float]:
    """Seconds of each of ``rounds`` ``add_bulk`` calls of ``BULK_JOBS``
    tiny jobs, each on a fresh queue, after one untimed round that loads
    the scripts. Fails if a queue does not hold every job afterwards."""
    from sandboxq import Queue

    client = redis.Redis.from_url(url)
    specs = [tiny_job(n) for n in range(BULK_JOBS)]
    seconds: list[float] = []
    for round_number in range(rounds + 1):
        queue = Queue(f"bench-bulk-{uuid.uuid4().hex[:10]}", connection=client)
        started = time.perf_counter()
        queue.add_bulk(specs)
        took = time.perf_counter() - started
        waiting = queue.counts()["waiting"]
        queue.obliterate(force=True)
        if waiting != BULK_JOBS:
            raise SystemExit(f"add_bulk left {waiting} waiting jobs, not {BULK_JOBS}")
        if round_number:  # round 0 warms up
            seconds.append(took)
    client.close()
    return seconds


def main(argv: list[str]) -> None:
    url, rounds = argv[1], int(argv[2])
    seconds = time_rounds(url, rounds)
    import sandboxq

    sys.stdout.write(orjson.dumps({"sandboxq": sandboxq.__file__, "seconds": seconds}).decode())


if __name__ == "__main__":
    main(sys.argv)
