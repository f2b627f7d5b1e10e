"""The wait: a second connection that only ever blocks on the queues'
markers (BZPOPMIN), so an idle worker wakes within a millisecond of an add.

With free children, a wait can carry a fetch pipelined behind it (``arm``):
Redis runs it as soon as the wait answers, so a woken worker gets its first
jobs without a round trip of its own. Its jobs are leased for the wait's
timeout longer, and none is started by Redis: the parent reports each start
when a child takes the job, as for prefetched jobs. A wait whose reply never
comes is given up a little after its timeout (``overdue``).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from sandboxq.keys import QueueKeys
from sandboxq.worker.broker.leases import Leases
from sandboxq.worker.broker.queue_commands import FetchCommand
from sandboxq.worker.broker.server_setup import ServerSetup
from sandboxq.worker.cluster import ClusterWaiter
from sandboxq.worker.link import LinkError, RedisLink
from sandboxq.worker.trouble import is_transient

#: The longest a blocking wait lasts before it is re-armed.
MAX_WAIT_SECONDS = 30.0
#: The shortest: a timeout that could round to 0 would block forever.
MIN_WAIT_SECONDS = 0.01
#: The longest a wait that carries a fetch lasts: that fetch leases its jobs
#: for this much longer than the lease, and a worker stopping while idle
#: lets the wait answer before it exits.
WAKE_FETCH_MAX_WAIT_SECONDS = 1.0


class Wait:
    def __init__(
        self,
        link: RedisLink | ClusterWaiter,
        keys: dict[str, QueueKeys],
        *,
        reply_timeout: float,
        leases: Leases,
        setup: ServerSetup,
    ) -> None:
        self.link = link
        self.markers = [k.marker for k in keys.values()]
        self.reply_timeout = reply_timeout
        self.leases = leases
        self.setup = setup
        self.armed = False
        self.deadline = 0.0
        #: The armed wait's fetch, if it carries one.
        self.fetch: FetchCommand | None = None
        self._replies: list[Any] = []

    def timeout(self, until_due_seconds: float | None, *, fetching: bool) -> float:
        """How long the next wait blocks: at most until a queue said to look
        again, and never so briefly it could mean "forever"."""
        timeout = MAX_WAIT_SECONDS
        if until_due_seconds is not None:
            timeout = min(timeout, until_due_seconds)
        if fetching:
            timeout = min(timeout, WAKE_FETCH_MAX_WAIT_SECONDS)
        return max(timeout, MIN_WAIT_SECONDS)

    def arm(self, timeout: float, fetch: FetchCommand | None) -> None:
        """Start waiting for a marker for ``timeout`` seconds, with ``fetch``
        behind the BZPOPMIN if given."""
        if not self.link.is_open:
            self.link.open()
        # BZPOPMIN treats 0 as "forever", and Redis truncates seconds to
        # whole milliseconds ("0.001" can become 0): never ask for less
        # than MIN_WAIT_SECONDS, so "due now" means "look again soon".
        commands: list[tuple[Any, ...]] = [("BZPOPMIN", *self.markers, f"{timeout:.3f}")]
        if fetch is not None:
            commands.append(fetch.build())
        self.fetch = fetch
        self._replies = []
        self.link.send(commands)
        self.armed = True
        # A reply that never comes (lost on the way) must not leave the
        # worker waiting forever: give up a little after the timeout.
        self.deadline = time.monotonic() + timeout + self.reply_timeout

    def overdue(self, now: float) -> bool:
        return self.armed and now >= self.deadline

    def on_io(self, writable: bool, fd: int | None) -> bool:
        """The connection (its socket ``fd``) is ready: True once the wait
        answered (a marker, its timeout, or a failure)."""
        try:
            if writable:
                self.link.on_writable(fd)
                return False
            self._replies += self.link.read(fd)
            if len(self._replies) < (1 if self.fetch is None else 2):
                return False
        except LinkError as exc:  # the link closed itself; the next wait reconnects
            self._replies += exc.replies
        self.armed = False
        return True

    def take_fetch(self) -> tuple[FetchCommand, Any] | None:
        """The answered wait's fetch and its reply. A fetch whose reply
        never came, or that failed half-way, may still have leased jobs: the
        next round reclaims them. Redis refusing it (NOSCRIPT, or refusing
        writes: MISCONF, READONLY, OOM... for a whole script run) means it
        leased nothing."""
        fetch, self.fetch = self.fetch, None
        replies, self._replies = self._replies, []
        if fetch is None:
            return None
        reply = replies[1] if len(replies) > 1 else None
        if reply is None or isinstance(reply, Exception):
            if isinstance(reply, redis.exceptions.NoScriptError):
                self.setup.redo()  # load the scripts again first
            elif reply is None or not is_transient(reply):
                self.leases.lost_fetch(fetch.queue, fetch.request)
            return None
        return fetch, reply

    def cancel(self) -> bool:
        """Drop the wait (its fetch's jobs are reclaimed): True if it was
        armed."""
        self.link.close()
        self._replies = []  # still armed: no fetch reply came
        self.take_fetch()
        armed, self.armed = self.armed, False
        return armed
