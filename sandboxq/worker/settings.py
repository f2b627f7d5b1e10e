"""The worker's settings: every knob of ``sandboxq worker`` in one checked,
frozen object (:class:`WorkerSettings`).

The command line (``sandboxq.cli``), Django's ``manage.py sandboxq_worker``
(through the same command line), :class:`~sandboxq.worker.Worker`'s keyword
arguments and the tests build one; the parent's parts and the pool read the
knobs they need from it. Sizes are bytes, times are seconds. A bad value is a
ValueError naming it, raised when the settings are made, before the worker
connects anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sandboxq.caps import DEFAULT_MAX_RESULT_BYTES
from sandboxq.connection import resolve_url
from sandboxq.options import rate_limit_fields
from sandboxq.worker import protocol
from sandboxq.worker.cpus import available_cpus
from sandboxq.worker.link import Endpoint

#: The most a child's niceness can be raised above the parent's (nice(2)).
MAX_CHILD_NICE = 19

#: The most async jobs one child may run at once (--async-concurrency):
#: far above what one event loop serves well, low enough that a typo (an
#: extra zero or two) is refused rather than leasing thousands of jobs.
MAX_ASYNC_CONCURRENCY = 1000

#: The largest result a worker may accept: what fits in a frame with room
#: for the rest of the done frame.
MAX_RESULT_BYTES = protocol.MAX_FRAME_SIZE - 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """Every knob of a worker, checked when made. ``procs="auto"`` becomes
    the number of CPUs this process may use, and ``url=None`` the URL of
    ``$SANDBOXQ_REDIS_URL`` or the local default, so what is stored is what
    the worker uses."""

    #: Children: a number, or "auto" (the CPUs this process may use).
    procs: int | str = "auto"
    #: Jobs of ``async def`` handlers each child runs at once (1 to 1000).
    async_concurrency: int = 1
    #: The Redis URL (None: $SANDBOXQ_REDIS_URL, else the local default).
    url: str | None = None
    #: Kill a child whose memory, with its job's processes, goes over this.
    max_memory_per_child: int | None = None
    #: Fail a job whose result is bigger than this as JSON.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: Replace a child after this many jobs.
    max_jobs_per_child: int | None = None
    #: How long a drain waits for the jobs in flight.
    shutdown_timeout: float = 30.0
    #: A job's lease; renewed every third of it.
    lease: float = 30.0
    #: Fail a job after its worker died more than this many times.
    max_stalls: int = 1
    #: The timeout of jobs whose handler and options set none.
    default_timeout: float | None = None
    #: How long a job with no handler here goes back to the queue (for a
    #: newer worker) before it fails.
    unknown_name_grace: float = 300.0
    #: After a timeout's SIGTERM, how long before SIGKILL.
    kill_grace: float = 2.0
    #: How long a child's on_child_start or on_child_exit hooks may take.
    child_hook_timeout: float = 10.0
    #: Niceness levels the children run below the parent (0 to 19).
    child_nice: int = 5
    #: (max jobs, per seconds): stored on the queues, like Queue.set_rate_limit.
    rate_limit: tuple[int, float] | None = None
    #: Serve /metrics, /healthz and /readyz on this port (None: no server).
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    #: /healthz fails when the loop has not run for this long...
    liveness_tick_timeout: float = 30.0
    #: ...or when no job finished for this long while jobs wait.
    liveness_idle_timeout: float = 600.0

    def __post_init__(self) -> None:
        check_async_concurrency(self.async_concurrency)
        if not 0 <= self.unknown_name_grace < math.inf:
            raise ValueError(
                f"unknown_name_grace must be >= 0 seconds, got {self.unknown_name_grace!r}"
            )
        self.rate_limit_fields  # noqa: B018 - checks the rate limit's bounds
        procs = available_cpus() if self.procs == "auto" else self.procs
        if not isinstance(procs, int) or procs < 1:
            raise ValueError(f"procs must be 'auto' or an int >= 1, got {procs!r}")
        if self.lease <= 0 or self.shutdown_timeout < 0 or self.max_stalls < 0:
            raise ValueError("lease must be > 0, shutdown_timeout and max_stalls >= 0")
        if not 0 < self.child_hook_timeout < math.inf:
            raise ValueError(
                "child_hook_timeout must be > 0 seconds and finite, "
                f"got {self.child_hook_timeout!r}"
            )
        self._check_max_result_bytes()
        nice = self.child_nice
        if not isinstance(nice, int) or not 0 <= nice <= MAX_CHILD_NICE:
            raise ValueError(f"child_nice must be an int from 0 to {MAX_CHILD_NICE}, got {nice!r}")
        url = resolve_url(self.url)
        Endpoint.from_url(url, connect_timeout=1.0)  # a bad URL is a boot error, now
        # Frozen: the resolved values are set the one way a frozen dataclass allows.
        object.__setattr__(self, "procs", procs)
        object.__setattr__(self, "url", url)

    def _check_max_result_bytes(self) -> None:
        value = self.max_result_bytes
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 1 <= value <= MAX_RESULT_BYTES
        ):
            raise ValueError(
                f"max_result_bytes must be an int from 1 to {MAX_RESULT_BYTES}, got {value!r}"
            )

    @property
    def pool_size(self) -> int:
        """How many children the pool keeps (``procs``, resolved)."""
        assert isinstance(self.procs, int)  # __post_init__ resolved "auto"
        return self.procs

    @property
    def redis_url(self) -> str:
        """The Redis URL the worker connects to (``url``, resolved)."""
        assert self.url is not None  # __post_init__ resolved None
        return self.url

    @property
    def rate_limit_fields(self) -> dict[str, Any]:
        """The queue settings ``--rate-limit`` stores on every queue served
        (so the limit holds across every worker), or none."""
        if self.rate_limit is None:
            return {}
        return rate_limit_fields("rl", *self.rate_limit)

    def replace(self, **changes: Any) -> WorkerSettings:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)


#: The names of the knobs, in the order the command line lists them.
SETTING_NAMES = tuple(field.name for field in dataclasses.fields(WorkerSettings))


def check_async_concurrency(value: Any) -> int:
    """``async_concurrency`` checked: an int from 1 to MAX_ASYNC_CONCURRENCY."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"async_concurrency must be an int from 1 to {MAX_ASYNC_CONCURRENCY}, got {value!r}"
        )
    if not 1 <= value <= MAX_ASYNC_CONCURRENCY:
        raise ValueError(
            f"async_concurrency must be from 1 to {MAX_ASYNC_CONCURRENCY} (jobs per child), "
            f"got {value}"
        )
    return value
