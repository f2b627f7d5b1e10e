"""The rows the add scripts write: one job (:class:`JobRow`), one job
of a flow (:class:`FlowNode`) and one dependency of a job
(:class:`Dependency`), with named fields.

``Queue.add``, flows, schedule occurrences and ``EagerQueue`` build and
read these, and the script wrappers in :mod:`sandboxq.scripts` take them;
only :meth:`JobRow.script_args` and :meth:`FlowNode.script_args` know the
positional shape the Lua scripts read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sandboxq.options import Dedupe, JobOptions, ms


class JobRow(NamedTuple):
    """One job to add, checked and encoded: nothing is left to validate."""

    #: The id asked for; "" lets the add script generate one.
    job_id: str
    priority: int
    #: How long the job waits before it may run; 0: it waits for a worker now.
    delay_ms: int
    name: str
    #: The job's data as JSON.
    data: bytes
    #: The job-hash fields its options set (:meth:`JobOptions.hash_fields`).
    option_fields: Sequence[Any] = ()
    #: The key of the schedule whose occurrence this job is, if any.
    schedule: str | None = None
    #: Its deduplication window, if any (its id is among the option fields too).
    dedupe: Dedupe | None = None

    @classmethod
    def of(
        cls,
        name: str,
        data: bytes,
        options: JobOptions,
        *,
        job_id: str | None = None,
        delay_ms: int | None = None,
        schedule: str | None = None,
    ) -> JobRow:
        """The row of a job with these options; ``job_id`` and ``delay_ms``,
        when given, stand for the options' own. (Positional: every
        ``Queue.add`` builds one, and keywords cost a NamedTuple more.)"""
        return cls(
            job_id or options.job_id or "",
            options.priority,
            ms(options.delay) if delay_ms is None else delay_ms,
            name,
            data,
            options.hash_fields(),
            schedule,
            options.dedupe,
        )

    def script_args(self) -> list[Any]:
        """The job as add_jobs.lua reads it (``Scripts.add``,
        ``Scripts.fire_schedule``, and inside a flow node): id, priority,
        delay_ms, dedupe id ("" for none; else ttl_ms, extend and replace
        follow it, see :meth:`Dedupe.script_args`), how many field/value
        pairs, the pairs. Every ``Queue.add`` builds one."""
        scheduled = self.schedule is not None
        pairs = 2 + scheduled + len(self.option_fields) // 2
        args = [self.job_id, self.priority, self.delay_ms, ""]
        if self.dedupe is not None:
            args[3:] = self.dedupe.script_args()
        args += [pairs, "name", self.name, "data", self.data]
        if scheduled:
            args += ["schedule", self.schedule]
        args += self.option_fields
        return args


class FlowNode(NamedTuple):
    """One job of a flow to add: its row and its place in the tree."""

    #: The key prefix of the job's queue (flows may span queues).
    prefix: str
    queue: str
    #: The 1-based index of its parent among the flow's nodes; 0: the root.
    parent_index: int
    #: Whether its failing for good fails its parent.
    fail_parent: bool
    #: Whether it waits for its children even if some failed for good.
    ignore_failed_children: bool
    #: How many children it has (it waits for them when any).
    children: int
    #: The job itself (its ``job_id`` is not used: flow ids are generated).
    row: JobRow

    def script_args(self) -> list[Any]:
        """The node as add_flow.lua reads it: prefix, queue, parent_index,
        fail_parent, ignore_failure, n_children (flags as "1" or "0"), then
        its job as :meth:`JobRow.script_args` gives it, less the job id and
        the dedupe id (flow nodes take no dedupe)."""
        if self.row.dedupe is not None:
            raise ValueError("flow nodes take no dedupe")
        job = self.row.script_args()
        del job[3]  # the dedupe id: ""
        return [
            self.prefix,
            self.queue,
            self.parent_index,
            "1" if self.fail_parent else "0",
            "1" if self.ignore_failed_children else "0",
            self.children,
            *job[1:],
        ]


class Dependency(NamedTuple):
    """A job another job depends on (``Queue.add(..., depends_on=...)``),
    as add_dependent.lua reads it: its queue's key prefix, that queue's
    name, its id."""

    prefix: str
    queue: str
    job_id: str
