"""Dependencies on jobs that exist: ``Queue.add(..., depends_on=[...])``.

The job waits in ``waiting-deps`` until each of its dependencies has
finished, then waits for a worker as any job does; a dependency that failed
(failed for good, was cancelled or was removed) fails it, cancels it, or
lets it run, as ``on_dependency_failure`` says. Dependencies are jobs of
this queue or of another queue of its hash-tag group (``media`` and
``media:...``: every key in one Redis Cluster slot, so one script settles
both). The Lua side is ``lua/add_dependent.lua`` and
``lua/include/dependents.lua``; this module checks what the caller gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sandboxq.job import JobRecord
from sandboxq.keys import QueueKeys, validate_name
from sandboxq.rows import Dependency

#: What a failed dependency does to the job that waits for it.
ON_DEPENDENCY_FAILURE = ("fail", "run", "cancel")

#: The most dependencies one job may have: each is read and written in the
#: add's script, which must stay short.
MAX_DEPENDENCIES = 1000


def check_policy(value: Any) -> str:
    """``on_dependency_failure``: "fail" (the default), "run" or "cancel"."""
    if value is None:
        return "fail"
    if value not in ON_DEPENDENCY_FAILURE:
        raise ValueError(f"on_dependency_failure must be 'fail', 'run' or 'cancel', got {value!r}")
    return str(value)


def resolve(keys: QueueKeys, depends_on: Any) -> list[Dependency]:
    """The distinct dependencies ``depends_on`` names, in order, for a job
    of the queue whose keys are ``keys``: each item a job (of any queue of
    the same hash-tag group), a job id of this queue (str or int), or a
    ``(queue name, job id)`` tuple. Raises TypeError or ValueError naming
    the bad item; nothing is looked up (the add script refuses ids that do
    not exist)."""
    if isinstance(depends_on, (str, bytes, Mapping, JobRecord)) or not isinstance(
        depends_on, Iterable
    ):
        raise TypeError(
            "depends_on must be a list of jobs, job ids or (queue, job id) tuples, "
            f"got {depends_on!r}"
        )
    found: dict[tuple[str, str], Dependency] = {}
    for index, item in enumerate(depends_on):
        if len(found) >= MAX_DEPENDENCIES:
            raise ValueError(f"depends_on may name at most {MAX_DEPENDENCIES} jobs")
        dependency = _one(keys, index, item)
        found.setdefault((dependency.prefix, dependency.job_id), dependency)
    return list(found.values())


def _one(keys: QueueKeys, index: int, item: Any) -> Dependency:
    """One item of ``depends_on``, checked."""
    if isinstance(item, JobRecord):
        other, job_id = item.queue.keys, item.id
    elif isinstance(item, tuple):
        if len(item) != 2:
            raise TypeError(
                f"depends_on[{index}] must be a (queue name, job id) pair, got {item!r}"
            )
        other, job_id = QueueKeys.for_queue(item[0]), item[1]
    else:
        other, job_id = keys, item
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if not isinstance(job_id, str):
        raise TypeError(
            f"depends_on[{index}] must be a job, a job id or a (queue name, job id) "
            f"tuple, got {item!r}"
        )
    validate_name(f"depends_on[{index}] job id", job_id)
    if other.hash_tag != keys.hash_tag:
        raise ValueError(
            f"depends_on[{index}]: queue {other.name!r} is not in the hash-tag group of "
            f"{keys.name!r} ({{{keys.hash_tag}}}); a job can depend only on jobs of queues "
            f"named '{keys.hash_tag}' or '{keys.hash_tag}:...'"
        )
    return Dependency(other.prefix, other.name, job_id)
