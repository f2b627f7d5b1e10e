"""The Broker: what the parent loop asks of Redis, made of the parts.

The parent hands it what children sent (``finish``, ``report``, ``step``,
``hand_back``...), starts a round when one is due (``start_round``), feeds it
the connections' readiness (``on_round_io``, ``on_wait_io``) and gets each
round's :class:`RoundResult`. The state lives in the parts: the outbox
(what is owed), the leases, the timers, fetching, the schedules' check, the
rate windows, the charts, the setup, the faults and the wait; plan.py
builds a round from them, round_trip.py sends it and reads its replies.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from sandboxq import registry
from sandboxq.keys import QueueKeys
from sandboxq.stats import MinuteCounts
from sandboxq.worker.broker.charts import Charts
from sandboxq.worker.broker.commands import RoundEnd
from sandboxq.worker.broker.faults import QueueFault, QueueFaults
from sandboxq.worker.broker.fetching import Fetching
from sandboxq.worker.broker.leases import Leases
from sandboxq.worker.broker.outbox import Outbox
from sandboxq.worker.broker.plan import Planner
from sandboxq.worker.broker.result import RoundResult
from sandboxq.worker.broker.round_trip import RoundReader, RoundTrip
from sandboxq.worker.broker.schedules import Schedules
from sandboxq.worker.broker.server_setup import ServerSetup
from sandboxq.worker.broker.timers import Timers
from sandboxq.worker.broker.wait import Wait
from sandboxq.worker.broker.windows import RateWindows
from sandboxq.worker.clock import ServerClock
from sandboxq.worker.cluster import ClusterLink, ClusterTopology, ClusterWaiter
from sandboxq.worker.link import Endpoint, LinkError, RedisLink
from sandboxq.worker.settings import WorkerSettings
from sandboxq.worker.trouble import reply_timeout

#: A wait's fetch leases its jobs this much past the wait's timeout, so
#: none lapses while its reply is on the way.
WAKE_FETCH_LEASE_SLACK_MS = 1


class Broker:
    """One worker parent's Redis: its rounds and its wait, over ``queues``."""

    def __init__(
        self,
        settings: WorkerSettings,
        queues: list[str],
        token: str,
        description: dict[str, Any] | None = None,
    ) -> None:
        """``settings``: the worker's (the URL, the lease, the stalls allowed
        and the queue settings ``--rate-limit`` stores); ``description``:
        what the worker registry shows of this worker."""
        self.url = url = settings.redis_url
        lease = settings.lease
        self.queues = list(queues)
        self.token = token
        self.lease_ms = int(lease * 1000)
        self.reply_timeout = reply_timeout(lease)
        self.description = description or {}
        self.keys = {q: QueueKeys.for_queue(q) for q in queues}
        self._connect(Endpoint.from_url(url, connect_timeout=self.reply_timeout))
        self.clock = ServerClock()
        self._make_parts(lease)
        self.wait = Wait(
            self.waiter,
            self.keys,
            reply_timeout=self.reply_timeout,
            lease=lease,
            leases=self.leases,
            setup=self.setup,
        )
        self.planner = Planner(
            self.keys,
            token=token,
            lease_ms=self.lease_ms,
            max_stalls=settings.max_stalls,
            settings=settings.rate_limit_fields,
            description=self.description,
            clock=self.clock,
            parts=(self.outbox, self.leases, self.timers, self.queue_faults, self.fetching),
            reads=(self.schedules, self.windows, self.charts, self.setup),
            wait=self.wait,
        )
        self.reader = RoundReader(self.queue_faults, self.schedules.forget, self.setup.redo)
        self.round_trip = RoundTrip(
            self.link,
            self.planner,
            self.reader,
            self.fetching,
            clock=self.clock,
            reply_timeout=self.reply_timeout,
        )

    def _make_parts(self, lease: float) -> None:
        """The parts that hold the broker's state (see the package's map)."""
        self.outbox = Outbox(self.queues)
        self.leases = Leases(self.queues)
        self.timers = Timers(lease)
        self.queue_faults = QueueFaults()
        self.windows = RateWindows(self.queues)
        self.charts = Charts(self.keys)
        self.setup = ServerSetup()
        self.fetching = Fetching(
            self.queues,
            clock=self.clock,
            leases=self.leases,
            windows=self.windows,
            faults=self.queue_faults,
            timers=self.timers,
        )
        self.schedules = Schedules(self.clock, self.fetching)

    def _connect(self, endpoint: Endpoint) -> None:
        """Rounds, and the blocking wait: one connection each, or on a Redis
        Cluster one per node for rounds and one per queue for the wait."""
        self.link: RedisLink | ClusterLink
        self.waiter: RedisLink | ClusterWaiter
        self.cluster = bool(endpoint.cluster_seeds)
        if self.cluster:
            topology = ClusterTopology(endpoint)
            self.link = ClusterLink(topology, home_key=self.keys[self.queues[0]].marker)
            self.waiter = ClusterWaiter(topology)
        else:
            self.link = RedisLink(endpoint)
            self.waiter = RedisLink(endpoint)

    # -- the parts' state the parent reads ------------------------------------------
    @property
    def stats(self) -> MinuteCounts:
        """Settled jobs counted for the dashboard's charts (sandboxq.stats)."""
        return self.charts.counts

    @property
    def faults(self) -> dict[str, QueueFault]:
        """Queues this worker leaves alone for now, and why."""
        return self.queue_faults.by_queue

    @property
    def maybe_work(self) -> bool:
        """The queues may hold jobs: fetch before waiting."""
        return self.fetching.maybe_work

    @property
    def limited_queues(self) -> set[str]:
        return self.fetching.limited_queues

    @property
    def fetch_hold_until(self) -> float:
        return self.fetching.hold_until

    @property
    def pending_since(self) -> float | None:
        return self.outbox.pending_since

    @property
    def pending_entries(self) -> int:
        return self.outbox.pending_entries

    @property
    def report_bytes(self) -> dict[tuple[str, str], int]:
        return self.outbox.report_bytes

    @property
    def finishes(self) -> dict[str, list[list[Any]]]:
        return self.outbox.finishes

    @property
    def to_hand_back(self) -> dict[str, list[str]]:
        return self.outbox.to_hand_back

    @property
    def interrupted(self) -> dict[str, list[str]]:
        return self.outbox.interrupted

    # -- what the parent loop asks ---------------------------------------------------
    def has_pending(self) -> bool:
        """Something waits to be sent (a queue at fault holds its own), or a
        round is on its way."""
        if self.round_trip.in_flight or self.schedules.busy() or self.wait.unblock_wanted:
            return True
        now = time.monotonic()
        return any(
            (queue in self.leases.unsure or self.outbox.waiting(queue))
            and not self.queue_faults.holds_work(queue, now)
            for queue in self.queues
        )

    def has_urgent(self) -> bool:
        """Something waits that must not wait for more to batch with it:
        jobs a lost reply may have leased, a schedule half-way fired, a
        durable step a child waits on (steps of several children still share
        a round when they come while one is in flight)."""
        if self.schedules.busy() or self.wait.unblock_wanted:
            return True
        unsure, steps = self.leases.unsure, self.outbox.steps
        if not unsure and not any(steps.values()):
            return False  # the common case, asked every turn of the loop
        now = time.monotonic()
        return any(
            (queue in unsure or steps[queue]) and not self.queue_faults.holds_work(queue, now)
            for queue in self.queues
        )

    @property
    def in_flight(self) -> bool:
        return self.round_trip.in_flight

    @property
    def round_deadline(self) -> float | None:
        return self.round_trip.deadline

    def next_timer(self) -> float:
        due = min(self.timers.next(self.holds_jobs()), self.schedules.next_check)
        if (retry := self.queue_faults.next_retry()) is not None:  # a queue at fault
            due = min(due, retry)
        return due

    def paused(self, queue: str, now: float) -> bool:
        """Whether this worker leaves the queue alone for now (a fault)."""
        return self.queue_faults.paused(queue, now)

    def retry_lapsed_faults(self, now: float) -> None:
        """A queue whose fault lapsed is tried again: look for work (the
        next fetch from it says whether its settings are usable now) and at
        its schedules."""
        if self.queue_faults.retry_lapsed(now):
            self.fetching.look_again()
            self.schedules.look_now()

    def holds_jobs(self) -> bool:
        return self.leases.holds_jobs()

    def hold_fetches(self, seconds: float) -> None:
        """Fetch nothing for ``seconds`` (other rounds go on)."""
        self.fetching.hold(seconds)

    def fetches_held(self, now: float) -> bool:
        return self.fetching.held(now)

    def now_ms(self) -> int:
        """Now on the Redis server's clock (milliseconds)."""
        return self.clock.now_ms()

    # -- what children sent, for the next round ----------------------------------------
    def finish(self, queue: str, entry: list[Any]) -> None:
        self.outbox.finish(queue, entry)

    def started(self, queue: str, job_id: str) -> None:
        """A child took a prefetched job: mark it started (with the next
        finish call of its queue), now on the server's clock."""
        self.outbox.started(queue, job_id, self.now_ms())

    def report(self, queue: str, job_id: str, kind: str, value: str) -> None:
        """A progress or log frame, for the next round. Progress not sent
        yet is replaced by the newer value: only the latest counts."""
        self.outbox.report(queue, job_id, kind, value)

    def held_report_bytes(self, queue: str, job_id: str) -> int:
        """Log bytes of this job the broker holds (not yet in Redis)."""
        return self.outbox.held_report_bytes(queue, job_id)

    def step(self, queue: str, job_id: str, key: str, result: str) -> None:
        """Record a durable step in the next round (step.lua); its status
        comes back in ``RoundResult.stepped``."""
        self.outbox.step(queue, job_id, key, result)

    def hand_back(self, queue: str, job_id: str, *, ran: bool = False) -> None:
        """Give a leased job back to its queue in the next round (hand_back.lua).
        ``ran``: it may have run (a forced shutdown interrupted it), so a
        manual_retry_only job fails instead; one that never ran goes back
        with nothing spent, whatever its options."""
        self.outbox.hand_back(queue, job_id, ran=ran)

    # -- a round: start, I/O, end ------------------------------------------------------
    def start_round(self, free_slots: int, start_now: int = 0) -> RoundResult | None:
        """Send one round (none may be in flight), fetching up to
        ``free_slots`` jobs of which ``start_now`` go to a free child at once
        (the rest are prefetched). Returns a result at once only if it could
        not be sent (no connection); else the result comes from
        :meth:`on_round_io` or :meth:`check_round_deadline`."""
        clock = time.monotonic()
        if self.fetching.held(clock) or self.wait.fetch is not None:
            free_slots = start_now = 0  # while a wait carries a fetch, it is the one to ask
        return self.round_trip.start(clock, free_slots, start_now)

    def on_round_io(
        self, readable: bool, writable: bool, fd: int | None = None
    ) -> RoundResult | None:
        """The round's connection (its socket ``fd``) is ready: write or
        read. Returns the round's result once its last reply arrived, or as
        soon as it failed."""
        return self.round_trip.on_io(readable, writable, fd)

    def check_round_deadline(self, now: float) -> RoundResult | None:
        """A round whose replies are overdue is given up: the connection is
        dropped (its replies may be lost on the way) and the round fails."""
        return self.round_trip.check_deadline(now)

    # -- the blocking wait --------------------------------------------------------------
    def arm_wait(self, free_slots: int = 0) -> None:
        """Start waiting for a marker (or the next delayed job) unless a wait
        is armed already; with ``free_slots`` free children, carrying a fetch
        of that many jobs (wait.py). Its request number makes it reclaimable
        like any fetch whose reply may be lost (``cancel_wait``)."""
        if self.wait.armed:
            return
        ready = self.setup.done and not self.cluster and self.clock.measured
        queue = self.fetching.wake_fetch_queue(free_slots, ready=ready)
        until_due = None
        if (due_ms := self.fetching.next_due_ms) is not None:
            until_due = (due_ms - self.now_ms()) / 1000.0
        timeout = self.wait.timeout(until_due, fetching=queue is not None)
        fetch = None
        if queue is not None:
            lease_ms = self.lease_ms + int(timeout * 1000) + WAKE_FETCH_LEASE_SLACK_MS
            fetch = self.planner.fetch(queue, free_slots, self.now_ms(), lease_ms, 0)
        self.wait.arm(timeout, fetch)

    @property
    def armed(self) -> bool:
        return self.wait.armed

    @property
    def wake_fetch_armed(self) -> bool:
        """The armed wait carries a fetch: a worker that stops lets it
        answer (``stop_waiting``), and hands back what it brought."""
        return self.wait.armed and self.wait.fetch is not None

    def stop_waiting(self) -> None:
        """The worker stops: end the wait. One that carries a fetch is
        unblocked by the next round, so the fetch's reply comes and nothing
        is left leased; else (or if it cannot be) it is dropped, and what
        its fetch may have leased is reclaimed."""
        if self.wake_fetch_armed and self.wait.ask_unblock(time.monotonic()):
            return
        self.cancel_wait()

    def wait_overdue(self, now: float) -> bool:
        """The armed wait's reply is later than its timeout allows."""
        return self.wait.overdue(now)

    @property
    def wait_deadline(self) -> float | None:
        return self.wait.deadline if self.wait.armed else None

    def on_wait_io(self, writable: bool, fd: int | None = None) -> RoundResult | None:
        """The waiting connection (its socket ``fd``) is ready. Once the wait
        answered (a marker, its timeout, or a failure) the worker looks for
        work again; returns what the wait's fetch leased, if it carried one."""
        if not self.wait.on_io(writable, fd):
            return None
        fetched = self.wait.take_fetch()
        if self.wait.timed_out:
            self.fetching.woken()  # a delayed job may be due; nothing else changed
        else:
            self._woken()
        if fetched is None:
            return None
        if self.round_trip.in_flight:
            # The round in flight may be what put these jobs back in line (a
            # hand-back, a retry): its replies go first, as on one connection,
            # or a job handed back and leased again would look like a lease
            # that lapsed while it ran here.
            self.round_trip.wake_held = fetched
            return None
        result = RoundResult()
        self.reader.use(*fetched, RoundEnd(result))
        return result

    def _woken(self) -> None:
        self.fetching.woken()
        self.windows.resync_all()  # a wake-up may be a changed limit
        self.schedules.look_now()  # ... or a new schedule

    def cancel_wait(self) -> None:
        """Drop an armed wait (shutting down, Redis trouble, or a reply that
        never came); the next round looks for work instead, after reclaiming
        what the wait's fetch may have leased."""
        if self.wait.cancel():
            self._woken()

    def close(self) -> None:
        """Leave Redis: forget this worker's registry entry and fetch marks.
        Best effort and without waiting: written if the connection takes it
        now, whatever state Redis is in."""
        self.cancel_wait()
        if self.link.is_open and not self.round_trip.in_flight:
            farewell: list[tuple[Any, ...]] = []
            if self.description:
                farewell.append(("HDEL", registry.WORKERS, self.token))
            farewell += [("HDEL", k.given_up, self.token) for k in self.keys.values()]
            with contextlib.suppress(LinkError):
                self.link.send(farewell)
        self.link.close()
