"""The parsers of the ``sandboxq`` commands other than ``worker``: the
admin commands (which :mod:`sandboxq.admin` runs), ``dev`` and
``dashboard``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from sandboxq.cli_values import (
    non_negative_int,
    parse_backoff,
    parse_duration,
    parse_json,
    positive_int,
)
from sandboxq.job import STATES

#: The commands ``sandboxq.admin.run`` implements.
ADMIN_COMMANDS = (
    "stats",
    "jobs",
    "job",
    "retry",
    "remove",
    "cancel",
    "promote",
    "drain",
    "obliterate",
    "pause",
    "resume",
    "clean",
    "workers",
    "add",
)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="Redis URL [$SANDBOXQ_REDIS_URL, else redis://localhost:6379/0]"
    )
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    return common


def _by_option() -> argparse.ArgumentParser:
    by = argparse.ArgumentParser(add_help=False)
    by.add_argument("--by", metavar="WHO", help="who did it, for the audit log [the OS user]")
    return by


Command = Callable[..., argparse.ArgumentParser]


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The admin commands: those that look (``stats``, ``jobs``, ``job``,
    ``workers``) and those that change queues and jobs."""
    common, by = _common_options(), _by_option()

    def command(name: str, summary: str, *, audited: bool = False) -> argparse.ArgumentParser:
        parents = [common, by] if audited else [common]
        return commands.add_parser(name, help=summary, description=summary, parents=parents)

    _add_looking_commands(command)
    _add_job_commands(command)
    _add_queue_commands(command)


def _add_looking_commands(command: Command) -> None:
    """The commands that only look: ``stats``, ``jobs``, ``job``."""
    stats = command(
        "stats",
        "job counts, paused flag, throughput (jobs per second over the last minute) "
        "and live workers, per queue",
    )
    stats.add_argument("queue", nargs="?", metavar="QUEUE", help="one queue [every queue]")
    stats.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stats.add_argument(
        "--interval",
        type=parse_duration,
        default=2.0,
        metavar="SECONDS",
        help="between refreshes with --watch [2s]",
    )
    stats.add_argument(
        "--iterations",
        type=positive_int,
        metavar="N",
        help="with --watch, stop after N refreshes (implies --watch)",
    )

    jobs = command("jobs", "list the jobs in one state, newest first for finished jobs")
    jobs.add_argument("queue", metavar="QUEUE")
    jobs.add_argument("--state", choices=STATES, default="failed", help="[failed]")
    jobs.add_argument("--limit", type=positive_int, default=20, metavar="N", help="[20]")

    job = command("job", "everything about one job: data, options, logs, error, audit...")
    job.add_argument("queue", metavar="QUEUE")
    job.add_argument("job_id", metavar="ID")


def _add_job_commands(command: Command) -> None:
    """The commands that act on one job (or every failed one)."""
    retry = command("retry", "send a failed job (or all) back to waiting", audited=True)
    retry.add_argument("queue", metavar="QUEUE")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", metavar="ID")
    which.add_argument("--all-failed", action="store_true", help="every failed job")
    retry.add_argument(
        "--reset-steps",
        action="store_true",
        help="forget the job's recorded steps (job.step), so it redoes them all",
    )

    remove = command("remove", "delete a job that is not running", audited=True)
    remove.add_argument("queue", metavar="QUEUE")
    remove.add_argument("job_id", metavar="ID")

    cancel = command(
        "cancel",
        "cancel a job for good: at once unless it is running, else the worker holding it "
        "stops it (SIGTERM, then SIGKILL after its --kill-grace); never retried. A flow "
        "parent's unfinished children are cancelled with it",
        audited=True,
    )
    cancel.add_argument("queue", metavar="QUEUE")
    cancel.add_argument("job_id", metavar="ID")
    cancel.add_argument("--reason", metavar="TEXT", help="why, for the job and the audit log")
    cancel.add_argument(
        "--keep-children",
        action="store_true",
        help="a flow parent's children run on (default: the unfinished ones are cancelled too)",
    )


def _add_queue_commands(command: Command) -> None:
    """The queue commands, then ``workers`` and ``add`` (the order of --help)."""
    for name, summary in (("pause", "stop handing out jobs"), ("resume", "hand out jobs again")):
        command(name, summary, audited=True).add_argument("queue", metavar="QUEUE")

    promote = command("promote", "run a delayed job now", audited=True)
    promote.add_argument("queue", metavar="QUEUE")
    promote.add_argument("job_id", metavar="ID")

    drain = command("drain", "delete every job that has not started (asks first)", audited=True)
    drain.add_argument("queue", metavar="QUEUE")
    drain.add_argument("--keep-delayed", action="store_true", help="delete waiting jobs only")
    drain.add_argument("--yes", action="store_true", help="do not ask (for scripts)")

    obliterate = command(
        "obliterate", "delete a queue: every job, schedule and its history (asks first)"
    )
    obliterate.add_argument("queue", metavar="QUEUE")
    obliterate.add_argument(
        "--force", action="store_true", help="even with active jobs (their workers lose them)"
    )
    obliterate.add_argument("--yes", action="store_true", help="do not ask (for scripts)")

    clean = command(
        "clean", "delete finished jobs older than AGE, or all but the newest N", audited=True
    )
    clean.add_argument("queue", metavar="QUEUE")
    clean.add_argument("--state", required=True, choices=[s for s in STATES if s != "active"])
    clean.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="AGE",
        help="finished more than AGE ago, e.g. 30s, 15m, 2h, 1d, 1w",
    )
    clean.add_argument("--keep", type=non_negative_int, metavar="N", help="all but the newest N")

    command("workers", "live workers: host, pid, queues, procs, uptime")

    add = command("add", "add a job")
    add.add_argument("queue", metavar="QUEUE")
    add.add_argument("name", metavar="NAME", help="job name (picks the handler)")
    add.add_argument("--data", type=parse_json, metavar="JSON", help="job data [null]")
    add.add_argument(
        "--delay", type=parse_duration, default=0.0, metavar="SECONDS", help="run later"
    )
    add.add_argument("--priority", type=int, default=0, metavar="N", help="lower runs first [0]")
    add.add_argument("--attempts", type=int, default=1, metavar="N", help="tries in all [1]")
    add.add_argument(
        "--backoff",
        type=parse_backoff,
        metavar="SPEC",
        help="wait between attempts: SECONDS (fixed), exponential:SECONDS, or a JSON object",
    )
    add.add_argument(
        "--timeout", type=parse_duration, metavar="SECONDS", help="per attempt [the handler's]"
    )
    add.add_argument("--group", metavar="NAME", help="the job's group, for per-group limits")
    add.add_argument("--job-id", metavar="ID", help="custom id; an existing id adds nothing")


def add_dev_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser(
        "dev",
        help="run a local Redis for development (AOF on) until Ctrl-C",
        description="Start a persistent local Redis, print the export line of its URL, "
        "and keep it running until SIGINT or SIGTERM.",
    )
    dev.add_argument("--dir", default=".sandboxq", help="Redis goes in DIR/dev-redis [.sandboxq]")
    dev.add_argument(
        "--port", type=int, metavar="PORT", help="also listen on 127.0.0.1:PORT [unix socket only]"
    )


def add_dashboard_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dash = commands.add_parser(
        "dashboard",
        help="serve the web dashboard (needs: pip install 'sandboxq[dashboard]')",
        description="Serve the web dashboard: queues, jobs, schedules and admin actions. "
        "A token (or --users) is required unless bound to a loopback address with --no-auth.",
    )
    dash.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    dash.add_argument("--port", type=int, default=8080, help="[8080]")
    dash.add_argument("--url", help="Redis URL [$SANDBOXQ_REDIS_URL or redis://localhost:6379/0]")
    dash.add_argument(
        "--token", help="one access token shared by all users [$SANDBOXQ_DASHBOARD_TOKEN]"
    )
    dash.add_argument(
        "--users",
        metavar="FILE",
        help="named users instead: NAME:HASH lines (HASH from 'sandboxq dashboard hash-token'); "
        "the audit records who acted",
    )
    dash.add_argument(
        "--no-auth", action="store_true", help="no authentication (loopback addresses only)"
    )
    dash.add_argument("--read-only", action="store_true", help="hide actions and refuse POSTs")
    dash.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name clients use, besides the bound address and the loopback names "
        "(repeatable; '*' for any); other Hosts get 400",
    )
    dash.add_argument(
        "--session-ttl",
        type=parse_duration,
        default=12 * 3600.0,
        metavar="DURATION",
        help="how long a login lasts (30m, 12h, 2d; plain numbers are seconds) [12h]",
    )
    dash.add_argument(
        "--trust-proxy-headers",
        action="store_true",
        help="believe X-Forwarded-Proto (Secure cookie over HTTPS) and X-Forwarded-For "
        "(the client's address): only behind a proxy that sets them",
    )
    dash_commands = dash.add_subparsers(
        dest="dashboard_command",
        metavar="[hash-token]",
        help="instead of serving: print the hash of a user's token, for a --users file",
    )
    dash_commands.add_parser(
        "hash-token",
        help="print the hash of a user's token, for a --users file",
        description="Read a token (prompted for without echo on a terminal, else one line "
        "of standard input) and print its scrypt hash: the HASH of a NAME:HASH line of "
        "the --users file.",
    )
