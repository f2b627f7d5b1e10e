"""The rate windows: a local mirror of each rate-limited queue's window.

The parent asks Redis for no more jobs than the mirror (fast.SlidingWindow)
allows, and does not ask again before it opens. Redis stays the authority:
the mirror is re-read (``resync``) at start, every recover tick, after a
wake-up (a limit may have changed) and whenever fetch says a limit held jobs
back.
"""

from __future__ import annotations

from typing import Any

from sandboxq import fast
from sandboxq.options import MAX_RATE_LIMIT_JOBS, MAX_SECONDS, ms
from sandboxq.worker.broker.faults import setting_int


class RateWindows:
    def __init__(self, queues: list[str]) -> None:
        self.windows: dict[str, fast.SlidingWindow] = {}
        self._params: dict[str, tuple[int, int]] = {}
        #: Queues whose limits the next round reads again.
        self.resync: set[str] = set(queues)

    def mirrors(self, queue: str) -> bool:
        return queue in self.windows

    def room(self, queue: str, wanted: int, now_ms: int) -> tuple[int, int | None]:
        """How many jobs to ask ``queue`` for: ``wanted``, or fewer if its
        window is fuller; and when it opens if it is full (else None)."""
        window = self.windows.get(queue)
        if window is None or wanted <= 0:
            return wanted, None
        room = window.allowed(now_ms)
        return min(wanted, room), window.opens_at(now_ms) if room <= 0 else None

    def record(self, queue: str, now_ms: int, fetched: int) -> None:
        if (window := self.windows.get(queue)) is not None:
            window.record(now_ms, fetched)

    def resync_all(self) -> None:
        """A wake-up may be a changed limit."""
        self.resync.update(self.windows)

    def resynced(self, paused: set[str]) -> None:
        """A round read every limit due but those of queues at fault, which
        are read after their pause."""
        if self.resync:
            self.resync = {queue for queue in self.resync if queue in paused}

    def mirror(self, queue: str, reply: Any) -> None:
        """Keep the mirror in step with the queue's rate limit (or drop it);
        the limiter log read next in the same round fills it. A limit the
        mirror cannot hold is a BadSetting (the queue pauses)."""
        raw_max, raw_window = reply
        if raw_max is None or raw_window is None:
            self.windows.pop(queue, None)
            self._params.pop(queue, None)
            return
        params = (  # the bounds the API and fetch.lua hold a rate limit to
            setting_int("rl_max", raw_max, 1, MAX_RATE_LIMIT_JOBS),
            setting_int("rl_window_ms", raw_window, 1, ms(MAX_SECONDS)),
        )
        if self._params.get(queue) != params:
            self.windows[queue] = fast.SlidingWindow(*params)
            self._params[queue] = params

    def sync(self, queue: str, reply: Any) -> None:
        """The limiter log's start times (ZRANGE WITHSCORES) fill the mirror."""
        if (window := self.windows.get(queue)) is not None:
            window.sync([int(float(score)) for score in reply[1::2]])
