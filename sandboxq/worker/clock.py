"""The Redis server's clock, as a worker sees it.

Lease deadlines are set by one worker and judged by another, so every worker
passes times on one clock to the scripts: its own, corrected by an offset it
measures with TIME. Scripts keep taking the time from ARGV, so tests can set
it.
"""

from __future__ import annotations

import time
from typing import Any

#: A TIME sample taken in a round trip slower than this is not trusted to
#: correct the clock (the server may have run it long after it was sent).
CLOCK_SAMPLE_MAX_SECONDS = 0.5


class ServerClock:
    """The Redis server's clock as seen from this process: local time plus an
    offset measured with TIME. Every worker passes corrected times to the
    scripts, so leases are set and judged on one clock."""

    def __init__(self) -> None:
        self.offset_ms = 0.0
        self.measured = False

    def now_ms(self) -> int:
        return int(time.time() * 1000 + self.offset_ms)

    def sample(self, sent_at: float, received_at: float, reply: Any) -> None:
        """Correct the offset from a TIME reply that ran first in a round
        trip sent at ``sent_at`` (local seconds). The server ran it about
        half a round trip later: a slow round trip (a stalled server) gives
        no trustworthy sample, unless there is none yet."""
        elapsed = received_at - sent_at
        if self.measured and elapsed > CLOCK_SAMPLE_MAX_SECONDS:
            return
        seconds, micros = reply
        server_ms = int(seconds) * 1000 + int(micros) / 1000
        self.offset_ms = server_ms - (sent_at + elapsed / 2) * 1000
        self.measured = True
