"""The worker parent: the Worker a program runs, which owns Redis and the
children, and how its parts fit together.

:class:`Worker` checks its handlers and settings when made; ``run()`` opens
the parts, runs the on_worker_start hooks, turns the loop until the worker
may exit, then closes everything, whatever state Redis is in. The parts,
each in its own module: the loop (``loop``: signals, one select, timers),
the rounds to Redis (``rounds``), dispatch of leased jobs to the children
and prefetching (``dispatch``), settling how jobs end (``settling``), what
the children say and their deaths (``supervision``), stopping
(``shutdown``); the pool (``pool``) is the one place a child's state
changes, and the broker (``broker``) the one place that talks to Redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from setproctitle import setproctitle

from sandboxq import hooks, logs
from sandboxq.addresses import redact
from sandboxq.connection import connect
from sandboxq.core_looking import counts_op, deduplicated_op, is_paused_op
from sandboxq.drive import drive
from sandboxq.handlers import Handler, handler_table
from sandboxq.keys import QueueKeys, validate_name
from sandboxq.metrics import Health, WorkerMetrics, serve
from sandboxq.worker.broker import Broker
from sandboxq.worker.dispatch import BUFFER_PER_CHILD, MAX_QUEUED_PER_CHILD, Dispatch
from sandboxq.worker.exit_codes import (
    EXIT_BOOT_ERROR,
    EXIT_FORCED,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_STOP_HOOK_FAILED,
    BootError,
)
from sandboxq.worker.loop import Loop, Watch
from sandboxq.worker.pool import Pool
from sandboxq.worker.rounds import Rounds
from sandboxq.worker.settings import (
    MAX_ASYNC_CONCURRENCY,
    MAX_CHILD_NICE,
    MAX_RESULT_BYTES,
    WorkerSettings,
    check_async_concurrency,
)
from sandboxq.worker.settling import Settling
from sandboxq.worker.shutdown import Shutdown
from sandboxq.worker.supervision import Supervisor

__all__ = [
    "BUFFER_PER_CHILD",
    "EXIT_BOOT_ERROR",
    "EXIT_FORCED",
    "EXIT_INTERNAL_ERROR",
    "EXIT_OK",
    "EXIT_STOP_HOOK_FAILED",
    "MAX_ASYNC_CONCURRENCY",
    "MAX_CHILD_NICE",
    "MAX_QUEUED_PER_CHILD",
    "MAX_RESULT_BYTES",
    "BootError",
    "Worker",
    "WorkerSettings",
    "check_async_concurrency",
    "resolve_handlers",
]


def resolve_handlers(
    queues: Iterable[str] | None,
    handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None,
) -> tuple[list[str], dict[tuple[str, str], Handler]]:
    """The queues to serve and their handlers by (queue, job name).

    ``handlers`` is ``None`` (everything registered with ``@handler``), a list
    of :class:`Handler`, or ``{job name: function}`` served on every queue.
    Queues default to those the handlers belong to.
    """
    wanted = None if queues is None else [validate_name("queue name", q) for q in queues]
    if isinstance(handlers, Mapping) and not wanted:
        raise BootError("a {name: function} handler map needs the queues to serve")
    table = handler_table(wanted, handlers)
    queue_list = wanted or sorted({q for q, _ in table})
    if not queue_list:
        raise BootError(
            "no handlers registered: import a module that uses @handler, or pass handlers"
        )
    served = {q for q, _ in table}
    empty = [q for q in queue_list if q not in served]
    if empty:
        raise BootError(f"no handler registered for queue(s): {', '.join(empty)}")
    return queue_list, table


class Worker:
    """Serve ``queues`` with a pool of forked children.

    The knobs are :class:`WorkerSettings`: pass one as ``settings``, or its
    fields as keyword arguments (``Worker(["q"], procs=2)``), not both.
    ``procs`` is a number or ``"auto"`` (the CPUs this process may use).
    Sizes are bytes, times are seconds. ``run()`` blocks until the worker
    stops and returns its exit code; ``stop()`` asks it to drain, from any
    thread.

    ``async_concurrency`` (``--async-concurrency``, 1 to 1000, default 1):
    how many jobs of ``async def`` handlers each child runs at once on its
    event loop; other jobs still run alone in a child. A crash or memory
    kill of a child fails every job it was running.
    """

    def __init__(
        self,
        queues: Iterable[str] | None = None,
        handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None,
        *,
        settings: WorkerSettings | None = None,
        **knobs: Any,
    ) -> None:
        self.queues, self.handlers = resolve_handlers(queues, handlers)
        if settings is None:
            settings = WorkerSettings(**knobs)
        elif knobs:
            raise TypeError(f"pass settings or keyword arguments, not both: {sorted(knobs)}")
        self.settings = settings
        self.procs = settings.pool_size
        self.url = settings.redis_url
        self.url_shown = redact(self.url)  # for logs: no password
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        #: Stops asked for and signals received, for the loop (``Watch``).
        self._signals: list[int] = []
        self._watch: Watch | None = None

    # -- public ------------------------------------------------------------
    def stop(self, force: bool = False) -> None:
        """Drain and stop (``force``: stop now, handing jobs back)."""
        self._signals.append(signal.SIGQUIT if force else signal.SIGTERM)
        if self._watch is not None:
            self._watch.wake()

    def run(self) -> int:
        """Run until stopped; returns the exit code (EXIT_OK after a clean drain)."""
        self._open()
        started = stop_hooks_ok = False
        try:
            self._start_hooks()
            started = True
            self.loop.run()
        finally:
            self._close()
            if started:
                stop_hooks_ok = self._stop_hooks()
        if self.shutdown.forced:
            return EXIT_FORCED
        return EXIT_OK if stop_hooks_ok else EXIT_STOP_HOOK_FAILED

    def _start_hooks(self) -> None:
        """on_worker_start, once the first children are forked (so they do
        not inherit what the hooks open). A failure, SystemExit included, is
        a boot error."""
        try:
            hooks.run(hooks.WORKER_START)
        except (Exception, SystemExit) as exc:
            raise BootError(
                f"an on_worker_start hook failed: {type(exc).__name__}: {exc}\n"
                + traceback.format_exc()
            ) from exc

    def _stop_hooks(self) -> bool:
        """on_worker_stop; False if one failed (logged). A hook's SystemExit
        does not decide the worker's exit code: the worker's own does."""
        try:
            hooks.run(hooks.WORKER_STOP)
        except (Exception, SystemExit):
            logs.log.error(
                "an on_worker_stop hook failed (exit code %d):\n%s",
                EXIT_STOP_HOOK_FAILED,
                traceback.format_exc(),
            )
            return False
        return True

    # -- setup and teardown ---------------------------------------------------
    def _open(self) -> None:
        """Connect, fork the children, and wire the parts together."""
        settings = self.settings
        self.broker = Broker(
            settings,
            self.queues,
            self.token,
            description={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": self.queues,
                "procs": self.procs,
                "started_at": time.time(),
            },
        )
        self._watch = watch = Watch(self._signals)
        self.broker.link.on_close = watch.unwatch
        self.broker.waiter.on_close = watch.unwatch
        self.pool = Pool(settings, self.handlers, inherited_fds=watch.own_fds())
        setproctitle(f"sandboxq parent: {','.join(self.queues)} [{self.procs} procs]")
        self.shutdown = Shutdown(settings, self.pool, self.broker)
        for _ in range(self.procs):
            self._spawn()
        self._open_metrics()
        self._wire(watch)

    def _wire(self, watch: Watch) -> None:
        """The parts the loop turns, each given what it works with."""
        settings = self.settings
        self.dispatch = Dispatch(
            settings, self.handlers, self.pool, self.broker, self.shutdown, watch.watch_child
        )
        settling = Settling(
            settings,
            self.handlers,
            self.pool,
            self.broker,
            self.dispatch,
            self.shutdown,
            self.metrics,
            self.health,
        )
        self.supervisor = Supervisor(
            settings,
            self.pool,
            self.broker,
            self.dispatch,
            settling,
            self.shutdown,
            self.metrics,
            watch.watch_child,
            self._spawn,
        )
        rounds = Rounds(
            self.queues,
            self.procs,
            self.url_shown,
            self.broker,
            self.dispatch,
            settling,
            self.supervisor,
            self.shutdown,
            self.metrics,
        )
        self.loop = Loop(
            watch,
            self.pool,
            self.broker,
            self.health,
            self.dispatch,
            self.supervisor,
            rounds,
            self.shutdown,
        )

    def _spawn(self) -> None:
        # A child replacing one that died is forked while the Redis
        # connections are open: it closes its copies, or a connection the
        # parent closes (to abort a blocked wait, say) would stay open in
        # the child, and Redis would hand the next wake-up to it.
        redis_fds = [fd for fd, _ in self.broker.link.sockets() + self.broker.waiter.sockets()]
        assert self._watch is not None
        self._watch.add_child(self.pool.spawn(redis_fds))

    def _open_metrics(self) -> None:
        """Metrics are always counted; the HTTP endpoint only with a port.
        Scrapes and probes use their own short-timeout Redis client, so a
        slow scrape never holds up the loop."""
        probe = connect(self.url, socket_timeout=1.0)
        keys = [QueueKeys.for_queue(name) for name in self.queues]
        self.metrics = WorkerMetrics(
            self.procs,
            active=self.pool.running_jobs,
            slots=self.procs * self.settings.async_concurrency,
            counts=lambda: {k.name: drive(probe, counts_op(k)) for k in keys},
            deduplicated=lambda: {k.name: drive(probe, deduplicated_op(k)) for k in keys},
        )
        self.health = Health(
            tick_timeout=self.settings.liveness_tick_timeout,
            idle_timeout=self.settings.liveness_idle_timeout,
            redis_ok=lambda: bool(probe.ping()),
            pool_up=lambda: len(self.pool.by_pid) == self.procs and not self.shutdown.stopping,
            # A paused queue's waiting jobs are not work this worker may do.
            queues_empty=lambda: all(
                drive(probe, counts_op(k))["waiting"] == 0 or drive(probe, is_paused_op(k))
                for k in keys
            ),
        )
        self._probe = probe
        self._http = None
        if self.settings.metrics_port is not None:
            self._http = serve(
                self.metrics, self.health, self.settings.metrics_host, self.settings.metrics_port
            )
            self.pool.inherited_fds.append(self._http.fileno())

    def _close(self) -> None:
        """Stop the children and leave Redis. Runs after any exit from the
        loop, so nothing here may raise, whatever state Redis is in."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        with contextlib.suppress(redis.RedisError, OSError):
            self._probe.close()
        assert self._watch is not None
        forget = self._watch.forget_child
        for child in self.pool.children():
            self.pool.retire(child)
        # Idle children exit within milliseconds of EOF, unless their
        # on_child_exit hooks take time: those get the hooks' timeout.
        wait = self.settings.child_hook_timeout if hooks.HOOKS[hooks.CHILD_EXIT] else 1.0
        deadline = time.monotonic() + max(self.settings.kill_grace, wait)
        while self.pool.by_pid and time.monotonic() < deadline:
            for child, _status in self.pool.reap():
                forget(child)
            time.sleep(0.005)  # children exit within milliseconds of EOF
        for child in self.pool.children():
            self.pool.kill(child)
        while self.pool.by_pid:
            for child, _status in self.pool.reap():
                forget(child)
        self.broker.close()
        self._watch.close()
