"""The web side: take an upload, answer ``202 Accepted`` at once, let a
worker resize it. Run it with ``uvicorn app:app``.

``POST /images?width=256`` with the image as the request body stores the
upload, enqueues a ``resize`` job with ``AsyncQueue.add`` (never blocking
the event loop) and answers 202 with a ``Location`` to poll.
``GET /jobs/{id}`` reports the job: its state, progress, and the resized
image's path once it is done.

The endpoints get the queue as a dependency (``get_queue``), so tests can
swap in an ``AsyncEagerQueue`` and need no Redis (see test_app.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from sandboxq.aio import AsyncQueue

UPLOADS = Path(os.environ.get("RESIZE_DIR", "resize-data")) / "uploads"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024

# Made at import time; it reads $SANDBOXQ_REDIS_URL when it first talks to Redis.
queue = AsyncQueue("images", defaults={"attempts": 3, "backoff": 2, "timeout": 30})


def get_queue() -> AsyncQueue:
    return queue


Images = Annotated[AsyncQueue, Depends(get_queue)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await queue.close()  # the event loop's Redis client, at shutdown


app = FastAPI(title="resize", lifespan=lifespan)


@app.post("/images", status_code=202)
async def upload(
    request: Request, queue: Images, width: int = Query(256, ge=16, le=4096)
) -> JSONResponse:
    body = await request.body()
    if not body:
        raise HTTPException(400, "send the image as the request body")
    if len(body) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"images up to {MAX_UPLOAD_BYTES} bytes")
    UPLOADS.mkdir(parents=True, exist_ok=True)
    path = UPLOADS / uuid.uuid4().hex
    path.write_bytes(body)  # small and local; a real app would use object storage
    job = await queue.add("resize", {"path": str(path), "width": width})
    return JSONResponse(
        {"job": job.id, "state": job.state},
        status_code=202,
        headers={"Location": f"/jobs/{job.id}"},
    )


@app.get("/jobs/{job_id}")
async def status(job_id: str, queue: Images) -> dict[str, Any]:
    job = await queue.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return {
        "job": job.id,
        "state": job.state,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
    }
