"""The worker parent's loop: signals, one select, then timers.

:class:`Watch` owns what the select waits on: the wake-up pipe (signals and
``Worker.stop()`` write to it), the children's pipes, the Redis connection
a round is on and the connection blocked in the idle wait. :class:`Loop`
turns: signal handlers only queue the signal, and the loop dispatches it
through its ``handle_<name>`` table; then one select, each ready
descriptor to its owner; then the timers (the children's limits, stale
prefetched jobs, Redis deadlines), a round if one is due, and the
shutdown. The parent never blocks, on a child or on Redis: pipes and Redis
connections are non-blocking, so a child that hangs, crashes or grows too
big is killed and replaced on time while the rest run, however slow Redis
is.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable

from sandboxq.metrics import Health
from sandboxq.worker.broker import Broker
from sandboxq.worker.child_state import Child
from sandboxq.worker.dispatch import Dispatch, Room
from sandboxq.worker.pool import HANDLED_SIGNALS, Pool
from sandboxq.worker.rounds import Rounds
from sandboxq.worker.shutdown import Shutdown
from sandboxq.worker.supervision import Supervisor

_WAKE, _WAITER, _LINK = "wake", "waiter", "link"


class Watch:
    """The selector and what it watches; the signals queued for the loop."""

    def __init__(self, signals: list[int]) -> None:
        #: Signals received (and stops asked for), oldest first, for the
        #: loop to act on.
        self.signals = signals
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        #: The Redis sockets the selector watches: fd -> (events, _LINK or _WAITER).
        self._watching: dict[int, tuple[int, str]] = {}
        #: What each tag's connections said on the turn they were last watched.
        self._watched_as: dict[str, list[tuple[int, bool]]] = {}
        self._on_main_thread = threading.current_thread() is threading.main_thread()
        if self._on_main_thread:
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, self._on_signal)

    def own_fds(self) -> list[int]:
        """The descriptors a child must close."""
        return [self._wake_r, self._wake_w, self.selector.fileno()]

    def close(self) -> None:
        if self._on_main_thread:
            signal.set_wakeup_fd(-1)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_w = -1

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # the loop acts on it

    def wake(self) -> None:
        """Wake the loop (from any thread): a stop was queued."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- children's pipes ------------------------------------------------------------
    def add_child(self, child: Child) -> None:
        self.selector.register(child.sock, selectors.EVENT_READ, child)

    def forget_child(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.sock)
        child.sock.close()

    def watch_child(self, child: Child) -> None:
        """Watch a child's pipe for what the parent wants of it now:
        reading unless it is held (or closed), writing while frames wait."""
        events = 0 if child.held or child.closed else selectors.EVENT_READ
        if child.outbox:
            events |= selectors.EVENT_WRITE
        watched = child.sock.fileno() in self.selector.get_map()
        if events and watched:
            self.selector.modify(child.sock, events, child)
        elif events:
            self.selector.register(child.sock, events, child)
        elif watched:
            self.selector.unregister(child.sock)

    # -- Redis connections -------------------------------------------------------------
    def watch_redis(self, broker: Broker) -> None:
        """Keep the selector watching the Redis connections as they are:
        reading while open, writing while commands wait to be written. A
        connection that was replaced is watched under its new descriptor.
        (On a Redis Cluster, the round's link and the wait have one
        connection per node or queue: each is watched under the same tag.)"""
        self._watch(_LINK, broker.link.sockets())
        self._watch(_WAITER, broker.waiter.sockets() if broker.armed else [])

    def unwatch(self, fd: int) -> None:
        """A Redis connection is closing: stop watching its descriptor now,
        before the number can be reused (by a child's pipe, say)."""
        if (current := self._watching.pop(fd, None)) is not None:
            self._watched_as.pop(current[1], None)  # the tag's sockets changed
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)

    def _watch(self, tag: str, sockets: list[tuple[int, bool]]) -> None:
        if self._watched_as.get(tag) == sockets:
            return  # as on the last turn: the common case, every turn of the loop
        wanted = {
            fd: selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
            for fd, write in sockets
        }
        for fd, (_events, owner) in list(self._watching.items()):
            if owner == tag and fd not in wanted:
                self.unwatch(fd)
        for fd, events in wanted.items():
            if (current := self._watching.get(fd)) != (events, tag):
                if current is not None:
                    self.unwatch(fd)
                self.selector.register(fd, events, tag)
                self._watching[fd] = (events, tag)
        self._watched_as[tag] = sockets


class Loop:
    """One turn after another until the worker may exit."""

    def __init__(
        self,
        watch: Watch,
        pool: Pool,
        broker: Broker,
        health: Health,
        dispatch: Dispatch,
        supervisor: Supervisor,
        rounds: Rounds,
        shutdown: Shutdown,
    ) -> None:
        self._watch = watch
        self._pool = pool
        self._broker = broker
        self._health = health
        self._dispatch = dispatch
        self._supervisor = supervisor
        self._rounds = rounds
        self._shutdown = shutdown
        #: What each signal does (SIGCHLD: a child may have exited).
        self._handlers: dict[int, Callable[[], None]] = {
            signal.SIGCHLD: self.handle_chld,
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
            signal.SIGQUIT: self.handle_quit,
        }
        self._reap = False

    def run(self) -> None:
        room = self._dispatch.room()
        while True:
            self._health.tick()
            self._watch.watch_redis(self._broker)
            # ``room`` is from the end of the last turn: nothing changed since.
            self._select(room)
            self._handle_signals()
            now = time.monotonic()
            self._timers(now)
            room = self._dispatch.room()
            self._rounds.start(room)
            if self._shutdown.stopping and self._shutdown.done():
                return
            self._rounds.arm_wait(room)

    def _select(self, room: Room) -> None:
        """One select; each ready descriptor to its owner."""
        broker = self._broker
        for key, mask in self._watch.selector.select(self._timeout(room)):
            if key.data == _WAKE:
                self._watch.drain_wake_pipe()
            elif key.data == _LINK:
                readable, writable = mask & selectors.EVENT_READ, mask & selectors.EVENT_WRITE
                if result := broker.on_round_io(bool(readable), bool(writable), key.fd):
                    self._rounds.done(result)
            elif key.data == _WAITER:
                writable = bool(mask & selectors.EVENT_WRITE)
                if woke_with := broker.on_wait_io(writable, key.fd):
                    self._rounds.after(woke_with)
            else:
                self._supervisor.on_io(key.data, mask)

    def _timers(self, now: float) -> None:
        """What is due by time: the children's limits, stale prefetched
        jobs, queues at fault to retry, and the Redis deadlines."""
        for child in self._pool.enforce_limits(now):
            self._dispatch.flush(child)  # "stop" frames
        self._dispatch.hand_back_stale(now)
        self._broker.retry_lapsed_faults(now)
        if result := self._broker.check_round_deadline(now):
            self._rounds.done(result)
        if self._broker.wait_overdue(now):
            self._broker.cancel_wait()  # its reply was lost: look for work instead

    def _timeout(self, room: Room) -> float:
        """How long the select may wait: until Redis, a child's limit, a
        stale prefetched job or the shutdown is due, and at most a second,
        or a quarter of the liveness tick timeout if that is less: an idle
        worker's loop has nothing else to wake it, and a loop that sleeps
        as long as the timeout would look stuck."""
        now = time.monotonic()
        longest = min(1.0, max(self._health.tick_timeout / 4, 0.01))
        candidates = [self._rounds.due(now, room), now + longest]
        if (limit := self._pool.next_deadline()) is not None:
            candidates.append(limit)
        if (stale := self._dispatch.next_stale_check()) is not None:
            candidates.append(stale)
        if (wait_deadline := self._broker.wait_deadline) is not None:
            candidates.append(wait_deadline)
        candidates += self._shutdown.deadlines()
        return max(min(candidates) - now, 0.0)

    # -- signals -------------------------------------------------------------------------
    def _handle_signals(self) -> None:
        """Act on the signals queued since the last turn, in order; reap
        once if a child may have exited."""
        signals = self._watch.signals
        while signals:
            signum = signals.pop(0)
            if (handle := self._handlers.get(signum)) is not None:
                handle()
        if self._reap:
            self._reap = False
            self._supervisor.reap(self._watch.forget_child)

    def handle_chld(self) -> None:
        self._reap = True

    def handle_term(self) -> None:
        self._shutdown.begin(force=False, why="SIGTERM")

    def handle_int(self) -> None:
        if self._shutdown.stopping:
            self._shutdown.begin(force=True, why="second SIGINT")
        else:
            self._shutdown.begin(force=False, why="SIGINT")

    def handle_quit(self) -> None:
        self._shutdown.begin(force=True, why="SIGQUIT")
