"""Handlers for tests/test_error_reporting.py: the error-reporting recipe of
examples/error_reporting/, with a Sentry transport that appends each event
to the file named in ``$SANDBOXQ_TEST_EVENTS`` instead of sending it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from sandboxq import Retry, handler
from tests.appending import append_line

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "error_reporting"))
import reporting  # the recipe, imported as a user would

Q = os.environ.get("SANDBOXQ_TEST_QUEUE", "reporting")


class FileTransport(Transport):
    """Records events where the test can read them."""

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            append_line(os.environ["SANDBOXQ_TEST_EVENTS"], orjson.dumps(event).decode())


reporting.SENTRY_TRANSPORT = FileTransport()


@handler(Q)
def charge(job: Any) -> str:
    if job.attempts_made == 0:
        raise ValueError(f"card {job.data['card']} declined")
    return "charged"


@handler(Q)
def later(job: Any) -> str:
    if job.retries == 0:
        raise Retry(delay=0)
    return "done"
