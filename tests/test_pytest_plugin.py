"""The pytest plugin, as a user's project meets it: a handler module and a
test file in a temporary directory, no conftest, run by a separate pytest
process; and ``run_until_empty(skip_delays=True)``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sandboxq import Backoff, Queue
from sandboxq.testing import run_until_empty

HANDLERS = """
from sandboxq import handler

@handler("images")
def resize(job):
    return {"width": job.data["width"] // 2}
"""

USER_TESTS = """
import os
import pytest
from sandboxq import Queue


def test_the_queue_is_fresh_and_on_a_private_redis(sandboxq_queue, sandboxq_redis_url):
    assert sandboxq_queue.counts()["waiting"] == 0
    assert os.environ["SANDBOXQ_REDIS_URL"] == sandboxq_redis_url
    assert sandboxq_redis_url.startswith("unix://")


@pytest.mark.sandboxq(queue="images")
def test_a_real_worker_runs_the_apps_handlers(sandboxq_queue, sandboxq_worker):
    worker = sandboxq_worker("myapp_jobs", procs=2)
    job = Queue("images").add("resize", {"width": 640})  # the app's own Queue
    assert job.wait(timeout=30) == {"width": 320}
    assert worker.running()


@pytest.mark.sandboxq(queue="images")
def test_each_test_gets_the_queue_empty(sandboxq_queue):
    assert sum(sandboxq_queue.counts().values()) == 0
    sandboxq_queue.add("resize", {"width": 1})
"""


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_users_project_gets_the_fixtures_without_a_conftest(tmp_path: Path) -> None:
    (tmp_path / "myapp_jobs.py").write_text(textwrap.dedent(HANDLERS))
    (tmp_path / "test_app.py").write_text(textwrap.dedent(USER_TESTS))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


def test_skip_delays_runs_delayed_jobs_and_backoff_retries_now(queue: Queue) -> None:
    attempts: list[int] = []

    def flaky(job: Any) -> str:
        attempts.append(job.attempts_made + 1)
        if job.attempts_made < 2:
            raise RuntimeError("try again")
        return "done"

    later = queue.add("later", delay=3600)
    retried = queue.add("flaky", attempts=3, backoff=Backoff.exponential(600))

    # Without skipping delays, both wait for their time
    assert run_until_empty(queue, {"later": lambda job: "ran", "flaky": flaky}) == {"retrying": 1}
    assert queue.get_job(later.id).state == "delayed"  # type: ignore[union-attr]

    # With it, the clock moves on until nothing is left
    totals = run_until_empty(queue, {"later": lambda job: "ran", "flaky": flaky}, skip_delays=True)
    assert totals == {"completed": 2, "retrying": 1}
    assert attempts == [1, 2, 3]
    assert later.wait(timeout=1) == "ran"
    assert retried.wait(timeout=1) == "done"
