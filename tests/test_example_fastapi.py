"""examples/fastapi_resize, run as its README says: uvicorn serving the app
and a worker over its handler, both real processes, talking over HTTP and
Redis; and the example's own tests (test_app.py), run with pytest in its
folder as a user runs them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from sandboxq import Queue
from tests.web_servers import call, serving
from tests.worker_harness import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "fastapi_resize"
StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def images(redis_url: str) -> Iterator[Queue]:
    """The example's queue, emptied after the test."""
    queue = Queue("images", url=redis_url)
    yield queue
    queue.obliterate(force=True)


@pytest.fixture
def web(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """``uvicorn app:app`` in the example's folder; its base URL once ready."""
    with serving(
        lambda port: [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)],
        cwd=EXAMPLE,
        env={"SANDBOXQ_REDIS_URL": redis_url, "RESIZE_DIR": str(tmp_path)},
        ready="Application startup complete",
    ) as url:
        yield url


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.timeout(120)
def test_an_upload_is_accepted_at_once_and_resized_by_the_worker(
    start_worker: StartWorker, images: Queue, web: str, tmp_path: Path
) -> None:
    start_worker(
        "-q",
        "images",
        "--max-memory-per-child",
        "512MiB",
        procs=1,
        modules=("jobs",),
        env={"PYTHONPATH": str(EXAMPLE), "RESIZE_DIR": str(tmp_path)},
    )

    # When an image is uploaded
    status, headers, body = call(f"{web}/images?width=256", png(600, 400))

    # Then the API answers 202 with where to look, and the worker resizes it
    assert status == 202, body
    assert headers["location"] == f"/jobs/{body['job']}"
    done = wait_until(
        lambda: (reply := call(web + headers["location"])[2])["state"] == "completed" and reply,
        60,
        "the resize to complete",
    )
    assert (done["result"]["width"], done["result"]["height"]) == (256, 171)
    assert done["progress"] == 50
    with Image.open(done["result"]["path"]) as resized:
        assert resized.size == (256, 171)

    # And a file that is no image fails at once, saying so, without retries
    status, headers, body = call(f"{web}/images", b"not an image")
    assert status == 202
    failed = wait_until(
        lambda: (reply := call(web + headers["location"])[2])["state"] == "failed" and reply,
        60,
        "the bad upload to fail",
    )
    assert failed["error"].startswith("Unrecoverable: not an image we can read")
    job = images.get_job(body["job"])
    assert job is not None and job.attempts_made == 1

    # And asking for an unknown job is a 404
    assert call(f"{web}/jobs/nope")[0] == 404


@pytest.mark.timeout(120)
def test_the_examples_own_tests_pass_in_process_with_and_without_redis(tmp_path: Path) -> None:
    pytest.importorskip("httpx", reason="the example's tests need httpx (the test extra)")
    # When the example's tests run as its README says: pytest in its folder
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=EXAMPLE,
        env={**os.environ, "RESIZE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=110,
    )
    # Then both pass: the AsyncEagerQueue one, and the one on the fixtures'
    # Redis that the app's import-time AsyncQueue finds by itself
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
