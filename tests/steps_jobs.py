"""Handlers for tests/test_steps.py: jobs with durable steps (job.step).

Every charge appends the job's id to the file named in
``$SANDBOXQ_TEST_CHARGES``: how many lines a job has there is how many
times its card was charged, whatever became of the processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from sandboxq import JobContext, handler
from tests.appending import append_line

Q = os.environ.get("SANDBOXQ_TEST_QUEUE", "steps")


def charge(job_id: str, amount: int) -> dict[str, Any]:
    append_line(os.environ["SANDBOXQ_TEST_CHARGES"], job_id)
    return {"charge": f"ch_{job_id}", "amount": amount}


def charges(job_id: str) -> int:
    path = Path(os.environ["SANDBOXQ_TEST_CHARGES"])
    return path.read_text().split().count(job_id) if path.exists() else 0


@handler(Q)
def charge_then_crash(job: JobContext) -> Any:
    """Charge, then die on the first attempt before recording success."""
    receipt = job.step("charge", charge, job.id, job.data["amount"])
    if job.attempts_made == 0:
        os._exit(1)  # the child dies: no result, no cleanup
    return {"receipt": receipt, "charged": charges(job.id)}


@handler(Q)
def charge_then_hang(job: JobContext) -> Any:
    """Charge, then hang on the first worker (the test SIGKILLs it), and
    finish on whichever worker runs the job next."""
    receipt = job.step("charge", charge, job.id, job.data["amount"])
    marker = os.environ["SANDBOXQ_TEST_CHARGES"] + ".hung"
    if not Path(marker).exists():
        append_line(marker, job.id)
        time.sleep(600)
    return {"receipt": receipt, "charged": charges(job.id)}


@handler(Q)
async def async_charge(job: JobContext) -> Any:
    async def charge_async(amount: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        return charge(job.id, amount)

    receipt = await job.step("charge", charge_async, job.data["amount"])
    if job.attempts_made == 0:
        raise RuntimeError("the shipping service is down")
    return {"receipt": receipt, "charged": charges(job.id)}
