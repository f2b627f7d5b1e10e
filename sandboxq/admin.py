"""The admin commands of ``sandboxq``: look at queues and jobs, and act on them.

``sandboxq.cli`` parses the arguments and calls :func:`run` (or
:func:`sandboxq.dev_redis.run_dev`). Each command prints an aligned table
or text by default and JSON with ``--json``, and returns the exit code: 0
done, 1 the action could not be done (no such job, the job is active...), 2
bad input or a Redis that cannot be reached. What it reports is found in
:mod:`sandboxq.reports` (shared with the dashboard) and printed with
:mod:`sandboxq.console`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from sandboxq import registry
from sandboxq.addresses import redact
from sandboxq.caps import terminal_safe
from sandboxq.connection import connect, describe, resolve_url, url_in_errors
from sandboxq.console import (
    EXIT_FAILED,
    EXIT_OK,
    first_line,
    format_duration,
    pretty_json,
    print_section,
    table_lines,
)

# sandboxq.cli imports these from here (they live in console and dev_redis).
from sandboxq.console import EXIT_USAGE as EXIT_USAGE
from sandboxq.console import fail as fail
from sandboxq.console import format_time as format_time
from sandboxq.console import print_json as print_json
from sandboxq.console import print_table as print_table
from sandboxq.dev_redis import run_dev as run_dev
from sandboxq.errors import ConnectionFailed
from sandboxq.job import FINISHED_STATES, STATES
from sandboxq.queue import Job, JobIsActive, Queue
from sandboxq.reports import discover_queues, job_report, job_summary
from sandboxq.scripts import now_ms

#: ``stats`` reports throughput over this many seconds.
THROUGHPUT_WINDOW = 60.0

#: Errors are cut to this many characters in the ``jobs`` table.
ERROR_WIDTH = 60


class CommandError(Exception):
    """A command could not do what was asked; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- connecting ----------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Run the admin command ``args.command`` against ``args.url``."""
    as_json = bool(getattr(args, "json", False))
    try:
        client = connect(resolve_url(args.url))
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE, as_json)
    where = describe(client)
    try:
        with url_in_errors(where):
            return COMMANDS[args.command](args, client)
    except CommandError as exc:
        return fail(str(exc), exc.code, as_json)
    except ConnectionFailed as exc:
        return fail(str(exc), EXIT_USAGE, as_json)
    except redis.RedisError as exc:  # e.g. a database number the server does not have
        return fail(f"Redis at {redact(where)} said: {exc}", EXIT_USAGE, as_json)
    finally:
        client.close()


def open_queue(client: redis.Redis, name: str) -> Queue:
    try:
        return Queue(name, connection=client)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def existing_job(queue: Queue, job_id: str) -> Job:
    job = queue.get_job(job_id)
    if job is None:
        raise CommandError(f"no job {job_id} in queue {queue.name!r}")
    return job


def live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """As :meth:`Queue.workers`, with ``uptime`` in seconds."""
    now = time.time()
    return [
        {**w, "uptime": now - w["started_at"] if "started_at" in w else None}
        for w in registry.live_workers(client, now_ms())
    ]


# -- stats -----------------------------------------------------------------------
STATS_HEADERS = (
    "QUEUE",
    *(state.upper() for state in STATES),
    "PAUSED",
    "COMPLETED/S",
    "FAILED/S",
    "WORKERS",
)


def queue_stats(queue: Queue, workers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "queue": queue.name,
        "counts": queue.counts(),
        "paused": queue.is_paused(),
        "throughput": queue.throughput(THROUGHPUT_WINDOW),
        "workers": [w for w in workers if queue.name in w.get("queues", ())],
    }


def collect_stats(client: redis.Redis, name: str | None) -> list[dict[str, Any]]:
    names = [name] if name else discover_queues(client)
    workers = live_workers(client)
    if name and not _known(client, name, workers):
        raise CommandError(f"no queue {name!r} on this Redis")
    return [queue_stats(open_queue(client, n), workers) for n in names]


def _known(client: redis.Redis, name: str, workers: list[dict[str, Any]]) -> bool:
    """Whether queue ``name`` exists: every change to a queue writes to its
    events stream, which trimming never deletes, and a worker may serve a
    queue nothing was added to yet. Neither: a typo, or another Redis."""
    if any(name in w.get("queues", ()) for w in workers):
        return True
    return bool(client.exists(open_queue(client, name).keys.events))


def show_stats(found: list[dict[str, Any]], name: str | None) -> None:
    rows = [
        (
            s["queue"],
            *(s["counts"][state] for state in STATES),
            s["paused"],
            s["throughput"]["completed"],
            s["throughput"]["failed"],
            len(s["workers"]),
        )
        for s in found
    ]
    print_table(rows, STATS_HEADERS)
    if not found:
        print("(no queues found)")
    elif name is not None and found[0]["workers"]:
        print()
        show_workers(found[0]["workers"])


def stats(args: argparse.Namespace, client: redis.Redis) -> int:
    watching = args.watch or args.iterations is not None
    refreshes = itertools.count(1) if args.iterations is None else range(1, args.iterations + 1)
    try:
        for refresh in refreshes:
            if refresh > 1:
                time.sleep(args.interval)
            _stats_once(args, client, watching)
            if not watching:
                break
    except KeyboardInterrupt:  # how --watch ends
        pass
    return EXIT_OK


def _stats_once(args: argparse.Namespace, client: redis.Redis, watching: bool) -> None:
    found = collect_stats(client, args.queue)
    if args.json:  # watching: one JSON document per line
        print_json(found[0] if args.queue else found, compact=watching)
        return
    if watching:
        _watch_header(args.interval)
    show_stats(found, args.queue)


def _watch_header(interval: float) -> None:
    if sys.stdout.isatty():
        print("\033[H\033[2J", end="")  # clear the screen, like watch(1)
    print(f"every {interval:g}s, Ctrl-C to stop  {format_time(time.time())}", flush=True)


# -- jobs --------------------------------------------------------------------------
def jobs(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    found = [job_summary(j) for j in queue.get_jobs(queue.job_ids(args.state, 0, args.limit))]
    if args.json:
        print_json(found)
        return EXIT_OK
    rows = [
        (
            j["id"],
            j["name"],
            f"{j['attempts_made']}/{j['attempts']}",
            first_line(j["error"], ERROR_WIDTH),
        )
        for j in found
    ]
    print_table(rows, ("ID", "NAME", "ATTEMPTS", "ERROR"))
    if not found:
        print(f"(no {args.state} jobs in queue {queue.name!r})")
    return EXIT_OK


# -- job ---------------------------------------------------------------------------
def show_job(report: dict[str, Any]) -> None:
    took = None
    if report["started_at"] and report["finished_at"]:
        took = f"{report['finished_at'] - report['started_at']:.3f}s"
    parent, pending = report["parent"], report["children_pending"]
    summary = [
        ("state", report["state"]),
        (
            "attempts",
            f"{report['attempts_made']}/{report['attempts']} "
            f"(stalls {report['stalls']}, retries {report['retries']})",
        ),
        ("progress", report["progress"]),
        ("created", format_time(report["created_at"])),
        ("started", format_time(report["started_at"])),
        ("finished", format_time(report["finished_at"])),
        ("took", took),
        ("cancelled by", report["cancelled_by"]),
        ("cancel reason", report["cancel_reason"]),
        ("dedupe id", report["dedupe_id"]),
        ("parent", f"{parent['queue']} {parent['id']}" if parent else None),
        ("children", f"{pending} pending" if pending else None),
    ]
    print(terminal_safe(f"job {report['id']} ({report['name']}) in queue {report['queue']!r}"))
    if report["corrupt"]:
        print_section("corrupt", [report["corrupt"]])
    print_table([row for row in summary if row[1] is not None], indent="  ")
    print_section("data", pretty_json(report["data"]))
    print_section("options", table_lines(list(report["options"].items())))
    _optional_sections(report)


def _optional_sections(report: dict[str, Any]) -> None:
    if report["result"] is not None:
        print_section("result", pretty_json(report["result"]))
    if report["error"]:
        print_section("error", report["error"].splitlines())
    if report["traceback"]:
        print_section("traceback", report["traceback"].rstrip().splitlines())
    if report["logs"]:
        print_section(f"logs ({len(report['logs'])})", report["logs"])
    if report["steps"]:
        steps = [(key, orjson.dumps(value).decode()) for key, value in report["steps"].items()]
        print_section(f"steps ({len(steps)})", table_lines(steps))
    if report["audit"]:
        rows = [(format_time(e.get("at")), e.get("by"), e.get("action")) for e in report["audit"]]
        print_section(f"audit ({len(rows)})", table_lines(rows))
    for title, found in (
        ("children results", report["children_results"]),
        ("children failed and skipped", report["children_failures"]),
    ):
        if found:
            print_section(f"{title} ({len(found)})", table_lines(list(found.items())))


def job(args: argparse.Namespace, client: redis.Redis) -> int:
    report = job_report(existing_job(open_queue(client, args.queue), args.job_id))
    if args.json:
        print_json(report)
    else:
        show_job(report)
    return EXIT_OK


# -- actions -------------------------------------------------------------------------
def _done(args: argparse.Namespace, message: str, result: dict[str, Any]) -> int:
    if args.json:
        print_json(result)
    else:
        print(terminal_safe(message))
    return EXIT_OK


def retry(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    if args.all_failed:
        count = queue.retry_failed(by=args.by)
        message = f"retried {count} failed job(s) of queue {queue.name!r}"
        return _done(args, message, {"queue": queue.name, "retried": count})
    if not queue.retry(args.job_id, by=args.by, reset_steps=args.reset_steps):
        state = existing_job(queue, args.job_id).state
        raise CommandError(f"job {args.job_id} is {state}, not failed: nothing to retry")
    message = f"retried job {args.job_id} of queue {queue.name!r}: waiting"
    return _done(args, message, {"queue": queue.name, "retried": 1, "id": args.job_id})


def remove(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    try:
        removed = queue.remove(args.job_id, by=args.by)
    except JobIsActive as exc:
        raise CommandError(str(exc)) from None
    if not removed:
        raise CommandError(f"no job {args.job_id} in queue {queue.name!r}")
    message = f"removed job {args.job_id} from queue {queue.name!r}"
    return _done(args, message, {"queue": queue.name, "removed": 1, "id": args.job_id})


def cancel(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    status = queue.cancel(
        args.job_id, reason=args.reason, by=args.by, keep_children=args.keep_children
    )
    if status is None:
        state = existing_job(queue, args.job_id).state
        raise CommandError(f"job {args.job_id} is {state}: nothing to cancel")
    message = f"cancelled job {args.job_id} of queue {queue.name!r}"
    if status == "cancelling":
        message = (
            f"job {args.job_id} of queue {queue.name!r} is active: cancelling, the worker "
            "holding it stops it"
        )
    return _done(args, message, {"queue": queue.name, "id": args.job_id, "status": status})


def promote(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    if not queue.promote(args.job_id, by=args.by):
        state = existing_job(queue, args.job_id).state
        raise CommandError(f"job {args.job_id} is {state}, not delayed: nothing to promote")
    message = f"promoted job {args.job_id} of queue {queue.name!r}: waiting"
    return _done(args, message, {"queue": queue.name, "promoted": 1, "id": args.job_id})


def confirm(args: argparse.Namespace, question: str) -> None:
    """Go on with a destructive command only if ``--yes`` was given or the
    person at the terminal says yes; a script without ``--yes`` is refused."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(f"{question}: refusing without --yes (stdin is not a terminal)")
    answer = input(f"{terminal_safe(question)}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed: nothing done")


def drain(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    counts = queue.counts()
    pending = counts["waiting"] + (0 if args.keep_delayed else counts["delayed"])
    kinds = "waiting" if args.keep_delayed else "waiting and delayed"
    confirm(args, f"delete the {pending} {kinds} job(s) of queue {queue.name!r}")
    removed = queue.drain(include_delayed=not args.keep_delayed, by=args.by)
    message = f"drained queue {queue.name!r}: {removed} {kinds} job(s) deleted"
    return _done(args, message, {"queue": queue.name, "removed": removed})


def obliterate(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    total = sum(queue.counts().values())
    confirm(args, f"delete queue {queue.name!r}: all {total} job(s), its schedules and history")
    try:
        queue.obliterate(force=args.force)
    except JobIsActive as exc:
        raise CommandError(f"{exc} (--force)") from None
    message = f"obliterated queue {queue.name!r}"
    return _done(args, message, {"queue": queue.name, "obliterated": True})


def _pause_or_resume(args: argparse.Namespace, client: redis.Redis, pause: bool) -> int:
    queue = open_queue(client, args.queue)
    changed = queue.pause(by=args.by) if pause else queue.resume(by=args.by)
    message = f"{'paused' if pause else 'resumed'} queue {queue.name!r}"
    if not changed:
        message = f"queue {queue.name!r} was {'paused already' if pause else 'not paused'}"
    return _done(args, message, {"queue": queue.name, "paused": pause, "changed": changed})


def pause(args: argparse.Namespace, client: redis.Redis) -> int:
    return _pause_or_resume(args, client, True)


def resume(args: argparse.Namespace, client: redis.Redis) -> int:
    return _pause_or_resume(args, client, False)


def clean(args: argparse.Namespace, client: redis.Redis) -> int:
    if args.older_than is None and args.keep is None:
        raise CommandError("clean needs --older-than and/or --keep", EXIT_USAGE)
    if args.older_than is not None and args.state not in FINISHED_STATES:
        raise CommandError(
            "--older-than counts from the finish time: it applies to completed, failed and "
            "cancelled jobs only (use --keep for the others)",
            EXIT_USAGE,
        )
    queue = open_queue(client, args.queue)
    count = queue.clean(args.state, older_than=args.older_than, keep=args.keep, by=args.by)
    message = f"removed {count} {args.state} job(s) from queue {queue.name!r}"
    return _done(args, message, {"queue": queue.name, "state": args.state, "removed": count})


def add(args: argparse.Namespace, client: redis.Redis) -> int:
    queue = open_queue(client, args.queue)
    try:
        added = queue.add(
            args.name,
            args.data,
            job_id=args.job_id,
            delay=args.delay,
            priority=args.priority,
            attempts=args.attempts,
            backoff=args.backoff,
            timeout=args.timeout,
            group=args.group,
        )
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    existed = not added.created
    message = f"added job {added.id} ({added.name}) to queue {queue.name!r}: {added.state}"
    if existed:
        message = f"job {added.id} exists already ({added.state}): nothing added"
    result = {"queue": queue.name, "id": added.id, "name": added.name, "state": added.state}
    return _done(args, message, {**result, "added": not existed})


# -- workers -------------------------------------------------------------------------
def show_workers(found: list[dict[str, Any]]) -> None:
    rows = [
        (
            w.get("host"),
            w.get("pid"),
            ",".join(w.get("queues", ())),
            w.get("procs"),
            None if w["uptime"] is None else format_duration(w["uptime"]),
        )
        for w in found
    ]
    print_table(rows, ("HOST", "PID", "QUEUES", "PROCS", "UPTIME"))


def workers(args: argparse.Namespace, client: redis.Redis) -> int:
    found = live_workers(client)
    if args.json:
        print_json(found)
        return EXIT_OK
    show_workers(found)
    if not found:
        print("(no live workers)")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, redis.Redis], int]] = {
    "stats": stats,
    "jobs": jobs,
    "job": job,
    "retry": retry,
    "remove": remove,
    "cancel": cancel,
    "promote": promote,
    "drain": drain,
    "obliterate": obliterate,
    "pause": pause,
    "resume": resume,
    "clean": clean,
    "workers": workers,
    "add": add,
}
