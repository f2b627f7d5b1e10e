"""The wait: a second connection that only ever blocks on the queues'
markers (BZPOPMIN), so an idle worker wakes within a millisecond of an add.

With free children, a wait can carry a fetch pipelined behind it (``arm``):
Redis runs it as soon as the wait answers, so a woken worker gets its first
jobs without a round trip of its own. Its jobs are leased for the wait's
timeout longer (the wait lasts at most a lease), and none is started by
Redis: the parent reports each start when a child takes the job, as for
prefetched jobs. A wait whose reply never comes is given up a little after
its timeout (``overdue``).

An idle worker's wait is its only round trip until it times out: at the
earliest delayed job's time, or after MAX_WAIT_SECONDS.
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

#: The longest a blocking wait lasts before it is re-armed. One that carries
#: a fetch lasts at most a lease as well: that fetch leases its jobs for the
#: wait's timeout longer than a lease, until the next renewal.
MAX_WAIT_SECONDS = 30.0
#: The shortest: a timeout that could round to 0 would block forever.
MIN_WAIT_SECONDS = 0.01


class Wait:
    def __init__(
        self,
        link: RedisLink | ClusterWaiter,
        keys: dict[str, QueueKeys],
        *,
        reply_timeout: float,
        lease: float,
        leases: Leases,
        setup: ServerSetup,
    ) -> None:
        self.link = link
        self.markers = [k.marker for k in keys.values()]
        self.reply_timeout = reply_timeout
        self.lease = lease
        self.leases = leases
        self.setup = setup
        self.armed = False
        self.deadline = 0.0
        #: The answered wait ran out of time, with no marker and no failure:
        #: nothing was added or changed meanwhile.
        self.timed_out = False
        #: The armed wait's fetch, if it carries one.
        self.fetch: FetchCommand | None = None
        self._replies: list[Any] = []
        #: The connection's id on the server (CLIENT ID, asked when it
        #: opens), for a CLIENT UNBLOCK when the worker stops; whether its
        #: reply is still to come; whether the next round sends the unblock.
        self.client_id: int | None = None
        self._id_to_come = False
        self.unblock_wanted = False

    def timeout(self, until_due_seconds: float | None, *, fetching: bool) -> float:
        """How long the next wait blocks: at most until a queue said to look
        again, and never so briefly it could mean "forever"."""
        timeout = MAX_WAIT_SECONDS
        if until_due_seconds is not None:
            timeout = min(timeout, until_due_seconds)
        if fetching:
            timeout = min(timeout, self.lease)
        return max(timeout, MIN_WAIT_SECONDS)

    def arm(self, timeout: float, fetch: FetchCommand | None) -> None:
        """Start waiting for a marker for ``timeout`` seconds, with ``fetch``
        behind the BZPOPMIN if given."""
        commands: list[tuple[Any, ...]] = []
        if not self.link.is_open:
            self.link.open()
            # A cluster's wait carries no fetch, so is never unblocked.
            self.client_id, self._id_to_come = None, isinstance(self.link, RedisLink)
            if self._id_to_come:
                commands.append(("CLIENT", "ID"))
        # BZPOPMIN treats 0 as "forever", and Redis truncates seconds to
        # whole milliseconds ("0.001" can become 0): never ask for less
        # than MIN_WAIT_SECONDS, so "due now" means "look again soon".
        commands.append(("BZPOPMIN", *self.markers, f"{timeout:.3f}"))
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
            self._take(self.link.read(fd))
            if len(self._replies) < (1 if self.fetch is None else 2):
                return False
            self.timed_out = self._replies[0] is None  # BZPOPMIN's nil: no marker came
        except LinkError as exc:  # the link closed itself; the next wait reconnects
            self._take(exc.replies)
            self.timed_out = False
        self.armed = False
        return True

    def _take(self, replies: list[Any]) -> None:
        """Keep the wait's replies; the connection's id, if it comes first."""
        if self._id_to_come and replies:
            self._id_to_come = False
            client_id, *replies = replies
            self.client_id = client_id if isinstance(client_id, int) else None
        self._replies += replies

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

    def ask_unblock(self, now: float) -> bool:
        """Stopping: have the next round end the wait at once (CLIENT
        UNBLOCK answers it as if it timed out, and its fetch runs), so what
        the fetch leased comes back and is handed back. False if it cannot
        be (no id known): cancel it instead. A wait that still does not
        answer within a reply timeout is given up (``overdue``)."""
        if not self.armed or self.client_id is None:
            return False
        self.unblock_wanted = True
        self.deadline = min(self.deadline, now + self.reply_timeout)
        return True

    def unblock_command(self) -> tuple[Any, ...] | None:
        """The CLIENT UNBLOCK the round being built sends, if one is wanted."""
        if not self.unblock_wanted:
            return None
        self.unblock_wanted = False
        if not self.armed or self.client_id is None:
            return None
        return ("CLIENT", "UNBLOCK", self.client_id)

    def unblock_refused(self) -> None:
        """Redis would not unblock the wait (an ACL may forbid CLIENT):
        give it up now instead, and reclaim what its fetch leased."""
        self.deadline = 0.0

    def cancel(self) -> bool:
        """Drop the wait (its fetch's jobs are reclaimed): True if it was
        armed."""
        self.link.close()
        self.client_id, self._id_to_come, self.unblock_wanted = None, False, False
        self._replies = []  # still armed: no fetch reply came
        self.take_fetch()
        armed, self.armed = self.armed, False
        return armed
