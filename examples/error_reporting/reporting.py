"""Report job errors to Sentry, tagged with the job: a recipe.

Import this module in the worker (``sandboxq worker myapp.jobs
reporting``) or from your handler module. Sentry starts in each child,
after the fork (``on_child_start``): a client started before the fork
would share its connections and threads with every child. Each handler
call then runs in its own Sentry scope, so an error carries the queue, the
job's name and id, and the attempt; ``Retry`` and ``RateLimited`` are flow
control, not errors, and are not reported.

The DSN comes from ``$SENTRY_DSN``; ``SENTRY_TRANSPORT`` lets the tests
hand in a transport that records events instead of sending them.
"""

from __future__ import annotations

import os
from typing import Any

import sentry_sdk

from sandboxq import RateLimited, Retry, job_middleware, on_child_start

#: Set by tests: a Transport instance to use instead of the network.
SENTRY_TRANSPORT: Any = None


@on_child_start
def start_sentry() -> None:
    sentry_sdk.init(
        dsn=os.environ.get("SENTRY_DSN"),
        transport=SENTRY_TRANSPORT,
        # The worker's own log lines about a failed job are not new errors.
        default_integrations=False,
    )


@job_middleware
def report_errors(job: Any, call_next: Any) -> Any:
    """Run the handler in a scope that names the job; report what it raises.
    (For ``async def`` handlers, write the same as an ``async def``
    middleware that awaits ``call_next(job)``.)"""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("sandboxq.queue", job.queue)
        scope.set_tag("sandboxq.job_name", job.name)
        scope.set_tag("sandboxq.job_id", job.id)
        scope.set_tag("sandboxq.attempt", str(job.attempts_made + 1))
        try:
            return call_next(job)
        except (Retry, RateLimited):
            raise
        except Exception as exc:
            sentry_sdk.capture_exception(exc)
            raise
        finally:
            sentry_sdk.flush(timeout=2)
