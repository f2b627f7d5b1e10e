"""The app's tests, in-process through ``httpx.ASGITransport`` (run them with
``pytest`` in this folder):

- without Redis: the endpoints get an ``AsyncEagerQueue`` through FastAPI's
  dependency overrides, which runs each job at ``add``, in the test;
- end to end: sandboxq's pytest fixtures start a private Redis and point
  ``$SANDBOXQ_REDIS_URL`` at it, so the app's own ``AsyncQueue``, made at
  import time, finds it; a real worker resizes the image.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import app as web
import httpx
import jobs
import pytest
from PIL import Image

from sandboxq import Queue
from sandboxq.testing import AsyncEagerQueue, WorkerProcess

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Uploads and resized images in the test's own folder."""
    monkeypatch.setattr(web, "UPLOADS", tmp_path / "uploads")
    monkeypatch.setattr(jobs, "OUTPUTS", tmp_path / "resized")
    monkeypatch.setenv("RESIZE_DIR", str(tmp_path))  # for a worker's children
    return tmp_path


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=web.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
def eager() -> Iterator[AsyncEagerQueue]:
    """The app's queue swapped for one that runs each job at ``add``."""
    queue = AsyncEagerQueue("images", defaults=web.queue.defaults)
    web.app.dependency_overrides[web.get_queue] = lambda: queue
    yield queue
    web.app.dependency_overrides.clear()


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def test_an_upload_is_resized_without_redis(
    client: httpx.AsyncClient, eager: AsyncEagerQueue
) -> None:
    reply = await client.post("/images?width=256", content=png(600, 400))
    assert reply.status_code == 202
    # The eager queue ran the job when the endpoint added it
    status = (await client.get(reply.headers["location"])).json()
    assert (status["state"], status["progress"]) == ("completed", 50)
    assert (status["result"]["width"], status["result"]["height"]) == (256, 171)

    # A file that is no image fails at once, without retries
    bad = await client.post("/images", content=b"not an image")
    [job] = [job for job in eager.jobs.values() if job.id == bad.json()["job"]]
    assert (job.state, job.attempts_made) == ("failed", 1)
    assert job.error.startswith("Unrecoverable: not an image we can read")


@pytest.mark.sandboxq(queue="images")
async def test_an_upload_is_resized_by_a_real_worker(
    client: httpx.AsyncClient,
    sandboxq_queue: Queue,
    sandboxq_worker: Callable[..., WorkerProcess],
) -> None:
    sandboxq_worker("jobs", env={"PYTHONPATH": str(HERE)})

    reply = await client.post("/images?width=256", content=png(600, 400))
    assert reply.status_code == 202
    job = await web.queue.get_job(reply.json()["job"])  # the app's own queue
    assert job is not None
    assert (await job.wait(timeout=60))["width"] == 256
    status = (await client.get(reply.headers["location"])).json()
    assert (status["state"], status["result"]["height"]) == ("completed", 171)
