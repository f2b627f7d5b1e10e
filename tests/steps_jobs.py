"""Handlers for tests/test_steps.py: jobs with durable steps (job.step).

Every charge appends the job's id to the file named in
``$SANDBOXQ_TEST_CHARGES``: how many lines a job has there is how many
times its card was charged, whatever became of the processes."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from sandboxq import JobContext, Retry, handler
from tests.appending import append_line
from tests.worker_harness import wait_until

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


# -- a step whose result cannot be recorded ----------------------------------------------
def charge_with_unrecordable_receipt(job_id: str, amount: int, kind: str) -> dict[str, Any]:
    """Charge, then return a receipt a step cannot record: over 64 KiB as
    JSON (``big``), or holding a Decimal, which JSON cannot (``decimal``)."""
    receipt = charge(job_id, amount)
    if kind == "big":
        return {**receipt, "pdf": "x" * (70 * 1024)}
    return {**receipt, "amount": Decimal(amount)}


@handler(Q)
def charge_unrecordable(job: JobContext) -> Any:
    """A step whose result cannot be recorded; then, per ``data["then"]``,
    the handler lets the error through (``raise``), catches everything and
    raises another error (``wrap``), or catches it and asks to run again
    (``retry``)."""
    then = job.data.get("then", "raise")
    try:
        job.step("charge", charge_with_unrecordable_receipt, job.id, 5, job.data["result"])
    except Exception as exc:
        if then == "raise":
            raise
        if then == "retry":
            raise Retry(0, "try the payment again") from exc
        raise RuntimeError("the payment step failed") from exc
    return "unreachable: the step cannot be recorded"


# -- one key called twice at once --------------------------------------------------------
def numbered_charge(job_id: str) -> dict[str, Any]:
    """Charge; the receipt names the charge's number, so two calls return
    different receipts."""
    charge(job_id, 1)
    return {"charge": f"ch_{job_id}_{charges(job_id)}"}


@handler(Q)
async def charge_concurrently(job: JobContext) -> Any:
    """Two tasks take the same step at once (asyncio.gather)."""

    async def charge_async() -> dict[str, Any]:
        await asyncio.sleep(0)  # the other task reaches the step meanwhile
        return numbered_charge(job.id)

    receipts = await asyncio.gather(
        job.step("charge", charge_async), job.step("charge", charge_async)
    )
    return {"receipts": receipts, "charged": charges(job.id)}


def waits_in_step(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside ``job.step``, waiting for another
    caller's run of the same key (not running the step's function)."""
    frame = sys._current_frames().get(thread.ident or 0)
    callee = None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "step" and code.co_filename.endswith("handlers.py"):
            return callee == "result"  # concurrent.futures.Future.result
        callee, frame = code.co_name, frame.f_back
    return False


def numbered_charge_once_both_called(job_id: str, threads: list[threading.Thread]) -> Any:
    """Charge, then return only once the other thread has called the same
    step too: it waits for this call, or (were steps not guarded) it runs
    the function again and charges a second time."""
    receipt = numbered_charge(job_id)
    [other] = [thread for thread in threads if thread is not threading.current_thread()]
    wait_until(
        lambda: waits_in_step(other) or charges(job_id) > 1 or not other.is_alive(),
        30,
        "the other thread's call of the same step",
    )
    return receipt


@handler(Q)
def charge_from_threads(job: JobContext) -> Any:
    """Two threads take the same step at once (a handler's thread pool)."""
    receipts: dict[int, Any] = {}
    threads: list[threading.Thread] = []

    def call(number: int) -> None:
        receipts[number] = job.step("charge", numbered_charge_once_both_called, job.id, threads)

    threads += [threading.Thread(target=call, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"receipts": [receipts[0], receipts[1]], "charged": charges(job.id)}
