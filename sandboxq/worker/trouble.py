"""Redis trouble: which errors pass, and how long to wait for a reply.

The worker waits every Redis error out (see the broker package); this module only
tells trouble that passes (logged as a warning) from a refusal that points
at a bug or at data something else wrote (logged as an error).
"""

from __future__ import annotations

import re

import redis

#: Redis error replies that mean "not now" rather than "never": the server is
#: saving badly (MISCONF), busy with a script (BUSY), loading its data, a
#: replica, full, or its cluster or master is failing over, or a cluster
#: slot moved to another node (MOVED, ASK: the slot map is read again). The worker treats
#: them like a lost connection. Any other error reply is waited out too, but
#: logged as an error: it points at a bug or at data something else wrote.
TRANSIENT_REPLIES = (
    "MISCONF",
    "BUSY",
    "LOADING",
    "READONLY",
    "OOM",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MOVED",
    "ASK",
)
_TRANSIENT = re.compile(r"(?:^|[\s:-])(?:" + "|".join(TRANSIENT_REPLIES) + r")\b")

#: What redis-py makes of some of those replies (it drops the code from the
#: message): LOADING is a ConnectionError already, MASTERDOWN a ClusterDownError.
_TRANSIENT_TYPES = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error is trouble that passes (see TRANSIENT_REPLIES).
    A script's error wraps the reply of the command that failed inside it."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, redis.ResponseError) and bool(_TRANSIENT.search(str(exc)))


def reply_timeout(lease: float) -> float:
    """How long the parent waits for a reply before giving up on it: well
    inside the lease, so a lost reply is noticed and retried before the
    leases it was to renew lapse; never under a second."""
    return min(max(lease / 4, 1.0), 5.0)
