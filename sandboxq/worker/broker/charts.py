"""The dashboard charts' counts (sandboxq.stats): settled jobs counted
here, and each queue's depth read once a minute, written by the rounds that
go anyway (they never make a round of their own)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sandboxq import stats
from sandboxq.keys import QueueKeys

#: A depth reading is three replies: ZCARD wait, GET gcount, ZCARD active.
DEPTH_REPLIES = 3


class Charts:
    def __init__(self, keys: Mapping[str, QueueKeys]) -> None:
        self.keys = keys
        self.counts = stats.MinuteCounts()
        #: Each queue's depth replies so far, then the writes of it the
        #: next round carries.
        self._depth_read: dict[str, list[int]] = {}
        self._depth_writes: list[tuple[Any, ...]] = []

    def take_depth_writes(self) -> list[tuple[Any, ...]]:
        writes, self._depth_writes = self._depth_writes, []
        return writes

    @staticmethod
    def depth_reads(k: QueueKeys) -> list[tuple[Any, ...]]:
        return [("ZCARD", k.wait), ("GET", k.gcount), ("ZCARD", k.active)]

    def note_depth(self, queue: str, minute: int, value: int) -> None:
        """One of a queue's depth replies; after the last, its write waits
        for the next round."""
        read = self._depth_read.setdefault(queue, [])
        read.append(value)
        if len(read) == DEPTH_REPLIES:
            del self._depth_read[queue]
            waiting, grouped, active = read
            self._depth_writes += stats.depth_commands(
                self.keys[queue], minute, waiting + grouped, active
            )

    def forget_depth(self, queue: str) -> None:
        """A depth reply was lost: that reading is dropped."""
        self._depth_read.pop(queue, None)
