"""The queue's operations, shared by :class:`sandboxq.Queue` and
:class:`sandboxq.aio.AsyncQueue`: validation, encoding, script calls and
reply decoding, written once as sans-I/O operations (see :mod:`sandboxq.ops`).

:class:`QueueCore` holds the queue's settings and adds jobs and flows; it is
made of the parts in :mod:`sandboxq.core_looking` (reading),
:mod:`sandboxq.core_admin` (acting, flow control) and
:mod:`sandboxq.core_schedules` (schedules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from sandboxq import dependencies, payload
from sandboxq.connection import check_url, describe, resolve_url
from sandboxq.core_admin import AdminOps
from sandboxq.core_looking import LookingOps
from sandboxq.core_schedules import ScheduleOps
from sandboxq.job import FINISHED_STATES, JobRecord
from sandboxq.keys import QueueKeys, validate_name
from sandboxq.ops import PLAN, Op, cmd
from sandboxq.options import JOB_OPTION_NAMES, PER_JOB_OPTION_NAMES, JobOptions
from sandboxq.rows import Dependency, FlowNode, JobRow
from sandboxq.scripts import now_ms

#: Default limit on a job's data, as JSON.
MAX_PAYLOAD_BYTES = 1024 * 1024

#: Jobs per add script call in ``add_bulk``: one round trip each.
BULK_CHUNK = 1000

#: How long one round trip may take before the call fails (seconds).
DEFAULT_TIMEOUT = 5.0


# -- the queue ---------------------------------------------------------------------
J = TypeVar("J", bound=JobRecord)


@dataclass
class Flow(Generic[J]):
    """A job of a flow and the flows of its children, as added."""

    job: J
    children: list[Flow[J]] = field(default_factory=list)


def check_defaults(defaults: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A queue's default job options, checked as ``add`` would check them;
    read-only (the queue encodes them once, for every plain add)."""
    if defaults is None:
        return MappingProxyType({})
    if not isinstance(defaults, Mapping):
        raise TypeError(f"defaults must be a dict of add() options, got {defaults!r}")
    unknown = set(defaults) - JOB_OPTION_NAMES
    per_job = PER_JOB_OPTION_NAMES & set(defaults)
    if unknown or per_job:
        bad = ", ".join(sorted(unknown | per_job))
        raise TypeError(f"defaults take the options of add() except job_id and dedupe; not: {bad}")
    JobOptions.build(**defaults)  # raises on a bad value, naming it
    return MappingProxyType(dict(defaults))


# Generic[J] named last as well: the API reference's griffe extension
# (docs/griffe_sandboxq.py) reads the type variable from it.
class QueueCore(LookingOps[J], AdminOps, ScheduleOps, Generic[J]):
    """What both front ends share: the queue's name, keys and settings, and
    its operations (generators; see the module's doc): adding jobs and
    flows here, the others in the parts it is made of. A front end sets
    ``job_type`` and defines ``_drive`` and ``sibling``."""

    job_type: type[J]

    def _setup(
        self,
        name: str,
        url: str | None,
        connection: Any,
        connector: Callable[..., Any],
        max_payload_bytes: int,
        defaults: Mapping[str, Any] | None,
        timeout: float,
    ) -> None:
        """Check the settings and take ``connection``, or keep what makes a
        client for ``url`` with ``connector`` (redis-py's, blocking or
        asyncio) when the front end first needs one (:meth:`_new_client`).
        A ``url`` given is checked here; none given is resolved then, so a
        queue made at import time follows ``$SANDBOXQ_REDIS_URL`` as it is
        when the queue is first used (a test's private Redis, say)."""
        self._settings(name, max_payload_bytes, defaults, timeout)
        self._connection = connection
        self._connector = connector
        self._given_url = check_url(url) if url else None
        #: Where the client connects, once known (see :attr:`url`).
        self._url = describe(connection) if connection is not None else self._given_url

    @property
    def url(self) -> str:
        """Where this queue's client connects (password included: see
        :func:`sandboxq.addresses.redact`). A queue given no URL and no
        connection resolves ``$SANDBOXQ_REDIS_URL`` when it makes its
        client; until then this says where that would be now."""
        return self._url if self._url is not None else resolve_url(None)

    def _new_client(self) -> Any:
        """A client of this queue's own, for the URL it was given, else
        ``$SANDBOXQ_REDIS_URL`` as it is now, else the local default."""
        self._url = resolve_url(self._given_url)
        return self._connector(
            self._url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )

    def _settings(
        self,
        name: str,
        max_payload_bytes: int,
        defaults: Mapping[str, Any] | None,
        timeout: float,
    ) -> None:
        self.name = validate_name("queue name", name)
        self.keys = QueueKeys.for_queue(name)
        self.max_payload_bytes = max_payload_bytes
        self.defaults = check_defaults(defaults)
        self.timeout = timeout
        # A plain add (no option given) takes these: its options and row,
        # checked and encoded once
        self._plain_options = JobOptions.build(**self.defaults)
        self._plain_row = JobRow.of("", b"", self._plain_options)

    def sibling(self, name: str) -> QueueCore[J]:
        """Another queue on the same connection (a flow's other queues)."""
        raise NotImplementedError

    def job(self, job_id: str, fields: dict[str, Any], created: bool | None = None) -> J:
        """A job object of this queue from known fields (no round trip)."""
        made = self.job_type(self, job_id, fields)
        made.created = created
        return made

    # -- adding ------------------------------------------------------------
    def _options(self, given: Mapping[str, Any]) -> JobOptions:
        """One job's options: the queue's defaults, then those given (a
        ``None`` is not given)."""
        chosen = {k: v for k, v in given.items() if v is not None}
        if not chosen:
            return self._plain_options
        return JobOptions.build(**{**self.defaults, **chosen})

    def _encode(self, name: Any, data: Any, options: JobOptions) -> JobRow:
        """One job as the add script writes it; raises before any write."""
        validate_name("job name", name)
        raw = payload.dump_json(data, f"data of job {name!r}", self.max_payload_bytes)
        if options is self._plain_options:  # its fields were encoded once
            plain = self._plain_row
            return JobRow("", plain.priority, plain.delay_ms, name, raw, plain.option_fields)
        return JobRow.of(name, raw, options)

    def _add_encoded(
        self, encoded: list[JobRow], data: list[Any], options: list[JobOptions]
    ) -> Op[list[J]]:
        """Run the add script on encoded jobs. A new job comes back as the
        snapshot just written; an id that existed already, as the job it is
        (read back in one more round trip), with ``created`` False."""
        now = now_ms()
        added = yield PLAN.add(self.keys, now, encoded)
        jobs: list[J | None] = []
        for (job_id, is_new), row, value, opts in zip(added, encoded, data, options, strict=True):
            if not is_new:
                jobs.append(None)
                continue
            fields = {
                "name": row.name,
                "data": value,
                "priority": opts.priority,
                "attempts": opts.attempts,
                "timeout": opts.timeout,
                "attempts_made": 0,
                "stalls": 0,
                # add.lua decides on the delay in ms; a delay under half a
                # millisecond rounds to none.
                "state": "delayed" if row.delay_ms > 0 else "waiting",
                "created_at": now / 1000.0,
            }
            jobs.append(self.job(job_id, fields, created=True))
        existing = [job_id for (job_id, is_new) in added if not is_new]
        if existing:
            found = iter((yield [cmd("HGETALL", self.keys.job(i)) for i in existing]))
            for index, (job_id, is_new) in enumerate(added):
                if not is_new:
                    jobs[index] = self.job_type.from_hash(self, job_id, next(found))
                    jobs[index].created = False  # type: ignore[union-attr]
        return jobs  # type: ignore[return-value]

    def _add(
        self,
        name: str,
        data: Any = None,
        *,
        job_id: str | None = None,
        delay: float | None = None,
        priority: int | None = None,
        attempts: int | None = None,
        backoff: Any = None,
        timeout: float | None = None,
        keep_completed: Any = None,
        keep_failed: Any = None,
        group: str | None = None,
        manual_retry_only: bool | None = None,
        dedupe: Any = None,
        depends_on: Any = None,
        on_dependency_failure: str | None = None,
    ) -> Op[J]:
        """Add one job and return it; an option left ``None`` takes the
        queue's default. A ``job_id`` that exists already adds nothing and
        returns the job that exists, with ``created`` False.

        Bad input raises ``TypeError`` or ``ValueError`` and writes nothing.

        Args:
            name: The job's name: it picks the handler.
            data: Any JSON value (orjson), at most ``max_payload_bytes`` as JSON.
            job_id: A custom id, which deduplicates; not a plain integer
                (those are generated).
            delay: Seconds to wait before the job may run.
            priority: Lower runs first (FIFO within a priority); from
                -1048575 to 1048575, default 0.
            attempts: Tries in all, at least 1 (the default).
            backoff: Wait between failed attempts: seconds (fixed), a
                :class:`Backoff`, or ``{"type", "delay", "jitter", "max"}``.
            timeout: Seconds an attempt may run before its child is killed.
            keep_completed: Retention once completed: a count,
                ``{"count": n, "age": seconds}``, ``True`` (keep all),
                ``False`` (keep none) or a :class:`Retention`; default 24 hours.
            keep_failed: Retention once failed or cancelled; default: kept
                until cleaned.
            group: A group name: groups take turns, and have their own limits.
            manual_retry_only: Never retry automatically: a failure, a stall
                or a forced stop leaves the job failed for a person to retry.
            dedupe: A deduplication window, ``{"id", "ttl", "extend",
                "replace"}`` or a :class:`Dedupe`: while a job added with
                that id is unfinished (or for ``ttl`` seconds), another add
                with it adds nothing and returns that job, with ``created``
                False; with ``replace``, a job still waiting or delayed takes
                the new data and options, and its delay starts again (a
                debounce). See the guide "Deduplication and debounce".
            depends_on: Jobs that exist, which this one waits for (in
                ``waiting-deps``) until every one has finished: jobs, job
                ids of this queue, or ``(queue name, job id)`` tuples, of
                queues of this queue's hash-tag group; at most 1,000. An id
                that does not exist refuses the add
                (:class:`sandboxq.UnknownDependency` naming it) and writes
                nothing. Not with ``delay`` or
                ``dedupe``. See the guide "Dependencies".
            on_dependency_failure: What a dependency that failed, was
                cancelled or was removed does to this job: ``"fail"`` (the
                default) fails it, naming the dependency; ``"cancel"``
                cancels it; ``"run"`` runs it anyway
                (``dependency_failures()`` says which failed).
        """
        if (
            job_id is None
            and delay is None
            and priority is None
            and attempts is None
            and backoff is None
            and timeout is None
            and keep_completed is None
            and keep_failed is None
            and group is None
            and manual_retry_only is None
            and dedupe is None
            and depends_on is None
            and on_dependency_failure is None
        ):
            options = self._plain_options  # the plain add: checked once
        else:
            given = {
                "job_id": job_id,
                "delay": delay,
                "priority": priority,
                "attempts": attempts,
                "backoff": backoff,
                "timeout": timeout,
                "keep_completed": keep_completed,
                "keep_failed": keep_failed,
                "group": group,
                "manual_retry_only": manual_retry_only,
                "dedupe": dedupe,
            }
            if depends_on is not None or on_dependency_failure is not None:
                dependent = yield from self._add_dependent(
                    name, data, depends_on, on_dependency_failure, given
                )
                if dependent is not None:
                    return dependent
            options = self._options(given)
        encoded = self._encode(name, data, options)
        return (yield from self._add_encoded([encoded], [data], [options]))[0]

    def _add_dependent(
        self,
        name: str,
        data: Any,
        depends_on: Any,
        on_dependency_failure: str | None,
        given: Mapping[str, Any],
    ) -> Op[J | None]:
        """Add one job that waits for ``depends_on`` (see ``add``); None,
        having done nothing, when ``depends_on`` is empty: a plain add."""
        policy = dependencies.check_policy(on_dependency_failure)
        if depends_on is None:
            raise TypeError("on_dependency_failure needs depends_on")
        found = dependencies.resolve(self.keys, depends_on)
        options = self._options(given)
        if not found:
            return None
        if options.delay:
            raise ValueError(
                "a job with depends_on takes no delay: it waits for its dependencies instead"
            )
        if options.dedupe is not None:
            raise ValueError("a job with depends_on takes no dedupe")
        row = self._encode(name, data, options)
        return (yield from self._add_waiting(row, data, options, policy, found))

    def _add_waiting(
        self,
        row: JobRow,
        data: Any,
        options: JobOptions,
        policy: str,
        found: list[Dependency],
    ) -> Op[J]:
        """Run the add_dependent script on a checked job; the job as added."""
        now = now_ms()
        job_id, created, state = yield PLAN.add_dependent(self.keys, now, policy, found, row)
        if not created or state in FINISHED_STATES:
            # One that existed, or one a failed dependency ended at once: as it is.
            raw = yield cmd("HGETALL", self.keys.job(job_id))
            job = self.job_type.from_hash(self, job_id, raw)
        else:
            fields = {
                "name": row.name,
                "data": data,
                "priority": options.priority,
                "attempts": options.attempts,
                "timeout": options.timeout,
                "attempts_made": 0,
                "stalls": 0,
                "state": state,
                "created_at": now / 1000.0,
                "on_dependency_failure": policy,
            }
            job = self.job(job_id, fields)
        job.created = created
        return job

    def _add_bulk(self, jobs: Iterable[Mapping[str, Any]]) -> Op[list[J]]:
        """Add many jobs, one round trip per chunk of 1,000.

        Each item is ``{"name": ..., "data": ..., **options}`` with the option
        names of ``add``. Every item is checked before anything is written.
        """
        specs = list(jobs)
        encoded, options = [], []
        for index, spec in enumerate(specs):
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise TypeError(f"add_bulk item {index} must be a dict with a 'name', got {spec!r}")
            if "depends_on" in spec or "on_dependency_failure" in spec:
                raise TypeError(
                    f"add_bulk item {index}: depends_on is not supported in add_bulk; "
                    "add each job that has dependencies with add()"
                )
            unknown = set(spec) - JOB_OPTION_NAMES - {"name", "data"}
            if unknown:
                raise TypeError(
                    f"add_bulk item {index} has unknown options: {', '.join(sorted(unknown))}"
                )
            opts = self._options({k: v for k, v in spec.items() if k not in ("name", "data")})
            encoded.append(self._encode(spec["name"], spec.get("data"), opts))
            options.append(opts)
        added: list[J] = []
        for start in range(0, len(encoded), BULK_CHUNK):
            chunk = slice(start, start + BULK_CHUNK)
            added += yield from self._add_encoded(
                encoded[chunk], [s.get("data") for s in specs[chunk]], options[chunk]
            )
        return added

    # -- flows ---------------------------------------------------------------
    def _add_flow(
        self,
        parent: Mapping[str, Any],
        children: Iterable[Mapping[str, Any]],
        *,
        fail_parent_on_failure: bool = True,
        ignore_failed_children: bool = False,
    ) -> Op[Flow[J]]:
        """Add a parent job and its children (each may have ``children`` of
        its own) atomically. A parent waits in ``waiting-children`` until
        every child finished; its handler then reads ``children_results()``.

        Nodes are dicts: ``name``, ``data``, the options of ``add`` (except
        ``job_id``), ``queue`` (children; default: this queue — other queues
        must share its hash tag, e.g. ``media:thumbs`` and ``media:index``),
        ``children``, and per child ``fail_parent_on_failure`` /
        ``ignore_failed_children`` overriding the flow's defaults. A child
        that failed for good fails its parent, or with
        ``ignore_failed_children`` is skipped; with neither, the parent keeps
        waiting until that child is retried and completes. Nodes of this
        queue take its defaults.
        """
        root = {**parent, "children": list(children), "queue": self.name}
        defaults = (fail_parent_on_failure, ignore_failed_children)
        nodes: list[FlowNode] = []
        queues: list[QueueCore[J]] = []
        self._flatten(root, 0, defaults, nodes, queues)
        ids = yield PLAN.add_flow(self.keys, now_ms(), nodes)
        flows = [
            Flow(q.job(job_id, {"name": node.row.name, "state": _added_state(node)}, created=True))
            for q, job_id, node in zip(queues, ids, nodes, strict=True)
        ]
        for flow, node in zip(flows, nodes, strict=True):
            if node.parent_index:
                flows[node.parent_index - 1].children.append(flow)
        return flows[0]

    def _flatten(
        self,
        node: Mapping[str, Any],
        parent_index: int,
        defaults: tuple[bool, bool],
        nodes: list[FlowNode],
        queues: list[QueueCore[J]],
    ) -> None:
        """Validate one node and its subtree, parents first, into ``nodes``."""
        if not isinstance(node, Mapping) or "name" not in node:
            raise TypeError(f"a flow node must be a dict with a 'name', got {node!r}")
        flow_keys = {
            "name",
            "data",
            "queue",
            "children",
            "fail_parent_on_failure",
            "ignore_failed_children",
        }
        options = {k: v for k, v in node.items() if k not in flow_keys}
        if "job_id" in options:
            raise TypeError("flow nodes take no job_id: their ids are generated")
        if "dedupe" in options:
            raise TypeError(
                "flow nodes take no dedupe: a flow adds all of its jobs or none of them"
            )
        if set(options) - JOB_OPTION_NAMES:
            raise TypeError(
                f"unknown flow node options: {', '.join(sorted(set(options) - JOB_OPTION_NAMES))}"
            )
        queue_name = node.get("queue") or self.name
        queue = self if queue_name == self.name else self.sibling(queue_name)
        if queue.keys.hash_tag != self.keys.hash_tag:
            raise ValueError(
                f"flow queue {queue_name!r} must share the hash tag of "
                f"{self.name!r} ({{{self.keys.hash_tag}}}): name the queues "
                f"'{self.keys.hash_tag}:...'"
            )
        opts = queue._options(options)
        children = list(node.get("children") or ())
        fail = node.get("fail_parent_on_failure", defaults[0])
        ignore = node.get("ignore_failed_children", defaults[1])
        nodes.append(
            FlowNode(
                prefix=queue.keys.prefix,
                queue=queue_name,
                parent_index=parent_index,
                fail_parent=bool(fail),
                ignore_failed_children=bool(ignore),
                children=len(children),
                row=self._encode(node["name"], node.get("data"), opts),
            )
        )
        queues.append(queue)
        index = len(nodes)
        for child in children:
            self._flatten(child, index, defaults, nodes, queues)


def _added_state(node: FlowNode) -> str:
    """The state add_flow.lua gives a node it adds."""
    if node.children:
        return "waiting-children"
    return "delayed" if node.row.delay_ms > 0 else "waiting"
