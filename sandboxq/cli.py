"""The ``sandboxq`` command: run a worker (``worker``), a local Redis for
development (``dev``) or the demo, and look at and administer queues and jobs
(``stats``, ``jobs``, ``job``, ``retry``, ``remove``, ``cancel``, ``pause``,
``resume``, ``clean``, ``workers``, ``add``, ``schedules``), or serve the web
``dashboard``."""

# This module parses and dispatches; sandboxq.admin implements the admin commands.

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import platform
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import redis

from sandboxq import logs
from sandboxq.job import STATES
from sandboxq.options import rate_limit_fields

if TYPE_CHECKING:
    from sandboxq.worker.settings import WorkerSettings

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``512M``, ``1.5G``, ``256MiB`` or plain bytes → bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M or 2G)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def parse_procs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--procs must be 'auto' or a number >= 1, got {text!r}")
    return value


def parse_async_concurrency(text: str) -> int:
    """``--async-concurrency``: a whole number from 1 to 1000 (the worker's
    own check, check_async_concurrency, says so)."""
    from sandboxq.worker.settings import check_async_concurrency

    try:
        return check_async_concurrency(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--async-concurrency must be a whole number of async jobs per child, "
            f"got {text!r}: {exc}"
        ) from None


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)?\s*$")


def parse_rate(text: str) -> tuple[int, float]:
    """``100/60s``, ``20/s``, ``5/2m``, ``1000/h`` → (max jobs, seconds)."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1 or (not match.group(2) and not match.group(3)):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (try 100/60s or 20/s)")
    amount = float(match.group(2) or 1)
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(3) or "s"]
    if amount * unit <= 0:
        raise argparse.ArgumentTypeError(f"the period of {text!r} must be > 0")
    rate = int(match.group(1)), amount * unit
    try:
        rate_limit_fields("rl", *rate)  # the bounds Queue.set_rate_limit checks
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return rate


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_SECONDS_PER = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``2h``, ``1d``, ``1w``, ``500ms`` or plain seconds → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (try 30s, 15m, 2h, 1d or 1w; plain numbers are seconds)"
        )
    return float(match.group(1)) * _SECONDS_PER[match.group(2) or "s"]


def parse_json(text: str) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not JSON: {exc} (quote it for the shell, e.g. --data '{{\"n\": 1}}')"
        ) from None


def parse_backoff(text: str) -> object:
    """``5`` or ``5s`` (fixed), ``exponential:2s``, or a JSON object as
    ``Backoff.parse`` takes it; checked here, so a bad one is a usage error."""
    from sandboxq.options import Backoff

    hint = f"not a backoff: {text!r} (try 5s, exponential:2s or a JSON object)"
    try:
        if text.lstrip().startswith("{"):
            spec = parse_json(text)
        else:
            kind, _, delay = text.rpartition(":")
            spec = {"type": kind or "fixed", "delay": parse_duration(delay)}
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(hint) from None
    try:
        return Backoff.parse(spec).to_dict()
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{hint}: {exc}") from None


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a JSON line on stderr when the command
    line asks for ``--json`` (scripts read errors the way they read output)."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if Parser.json_errors:
            print(orjson.dumps({"error": message, "code": 2}).decode(), file=sys.stderr)
            raise SystemExit(2)
        super().error(message)


def version_line() -> str:
    """What ``--version`` prints and the worker logs at start: the release, the
    implementation of the hot path in use (and why the twin, if it is), the Python."""
    from sandboxq import __version__, fast

    python = platform.python_version()
    return f"sandboxq {__version__}, {fast.describe()}, Python {python}"


def log_version() -> None:
    """The version line, as a warning when the twin runs for want of a build:
    pip shows a build's own warning only with -v, so the worker says it too."""
    from sandboxq import fast

    if fast.IMPLEMENTATION == "pure" and fast.IMPLEMENTATION_REASON != fast.FORCED:
        logs.log.warning(
            "%s: the worker parent runs slower than with the native extension "
            "(see the Installation guide)",
            version_line(),
        )
    else:
        logs.log.info("%s", version_line())


class PrintVersion(argparse.Action):
    """``--version``, printed as it is (argparse's own action wraps long lines)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(prog="sandboxq", description=__doc__)
    parser.add_argument("--version", action=PrintVersion)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a sandboxed worker")
    worker.add_argument(
        "modules",
        nargs="*",
        metavar="MODULE",
        help="modules that register handlers (default: $SANDBOXQ_APP)",
    )
    add_worker_options(worker)

    demo = commands.add_parser("demo", help="run a demo on a private, embedded Redis")
    demo.add_argument("--jobs", type=int, default=200, help="thumbnail jobs to run [200]")
    demo.add_argument("--procs", type=parse_procs, default="auto")
    demo.add_argument("--dir", default=".sandboxq", help="where Redis and outputs go")

    schedules = commands.add_parser("schedules", help="list a queue's schedules")
    schedules.add_argument("queue", metavar="QUEUE")
    schedules.add_argument("--url", help="Redis URL [$SANDBOXQ_REDIS_URL]")
    schedules.add_argument("--json", action="store_true", help="print JSON, for scripts")
    add_admin_commands(commands)
    add_dev_command(commands)
    add_dashboard_command(commands)
    return parser


@dataclass(frozen=True, slots=True)
class WorkerOption:
    """One option of ``sandboxq worker``: the WorkerSettings field ``name``
    (its flag is ``--name`` with dashes; its default is the field's) or,
    for the options that are not settings, ``default``."""

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: Sequence[Any] | None = None
    default: Any = None


#: The options of ``sandboxq worker`` but its MODULE arguments and
#: ``--queue``, in the order ``--help`` lists them: every WorkerSettings
#: knob, then the logging options.
WORKER_OPTIONS = (
    WorkerOption("procs", "children: a number, or auto (usable CPUs) [auto]", parse_procs),
    WorkerOption(
        "async_concurrency",
        "jobs of async def handlers each child runs at once on its event loop (1 to "
        "1000); other jobs still run alone. A crash or memory kill of a child fails every "
        "job it was running [1]",
        parse_async_concurrency,
        "N",
    ),
    WorkerOption("url", "Redis URL [$SANDBOXQ_REDIS_URL or redis://localhost:6379/0]"),
    WorkerOption(
        "max_memory_per_child",
        "kill a child whose memory (with the processes its job started) goes over "
        "this, failing its job (e.g. 512M)",
        parse_size,
        "SIZE",
    ),
    WorkerOption(
        "max_result_bytes",
        "fail a job whose result is bigger than this as JSON [1M]",
        parse_size,
        "SIZE",
    ),
    WorkerOption("max_jobs_per_child", "replace a child after N jobs", int, "N"),
    WorkerOption(
        "shutdown_timeout",
        "how long SIGTERM waits for jobs in flight [30]",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption(
        "lease",
        "job lease; renewed by the parent every third of it [30]",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption("max_stalls", "fail a job after its worker died more than N times [1]", int, "N"),
    WorkerOption(
        "default_timeout",
        "timeout of jobs whose handler and options set none",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption(
        "unknown_name_grace",
        "a job whose name no handler here runs goes back to the queue (for a newer "
        "worker) until it is this old, then fails (default 300)",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption(
        "kill_grace",
        "after a timeout's SIGTERM, wait this long before SIGKILL [2]",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption(
        "child_hook_timeout",
        "how long a child's on_child_start or on_child_exit hooks may take before "
        "the child is killed and replaced [10]",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption(
        "child_nice",
        "run children N levels of nice(1) below the parent, which serves them all "
        "(0 to 19; 0 = the same priority) [5]",
        int,
        "N",
        choices=range(20),
    ),
    WorkerOption(
        "rate_limit",
        "at most N job starts per period across all workers, e.g. 100/60s, 20/s, 5/2m "
        "(stored on the queues, like Queue.set_rate_limit)",
        parse_rate,
        "N/PERIOD",
    ),
    WorkerOption(
        "metrics_port",
        "serve Prometheus /metrics and the /healthz and /readyz probes on this port",
        int,
        "PORT",
    ),
    WorkerOption("metrics_host", "address to bind [0.0.0.0]"),
    WorkerOption(
        "liveness_tick_timeout",
        "/healthz fails when the worker loop has not run for this long [30]",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption(
        "liveness_idle_timeout",
        "/healthz fails when no job finished for this long while jobs wait [600]",
        positive_seconds,
        "SECONDS",
    ),
    WorkerOption("log_format", "", choices=("text", "json"), default="text"),
    WorkerOption("log_level", "", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO"),
)


def add_worker_options(worker: argparse.ArgumentParser) -> None:
    """The options of ``sandboxq worker`` (all but its MODULE arguments), on
    ``worker``: the command's parser, or another front end's (Django's
    ``manage.py sandboxq_worker``), so they are defined once, from
    :data:`WORKER_OPTIONS` and the defaults of WorkerSettings."""
    from sandboxq.worker.settings import WorkerSettings

    defaults = {field.name: field.default for field in dataclasses.fields(WorkerSettings)}
    worker.add_argument(
        "-q",
        "--queue",
        action="append",
        dest="queues",
        metavar="QUEUE",
        help="queue to serve (repeatable; default: the handlers' queues)",
    )
    for option in WORKER_OPTIONS:
        extra: dict[str, Any] = {}
        for key in ("type", "metavar", "choices", "help"):
            if value := getattr(option, key):
                extra[key] = value
        worker.add_argument(
            "--" + option.name.replace("_", "-"),
            default=defaults.get(option.name, option.default),
            **extra,
        )


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    """The WorkerSettings of a parsed ``sandboxq worker`` command line."""
    from sandboxq.worker.settings import SETTING_NAMES, WorkerSettings

    return WorkerSettings(**{name: getattr(args, name) for name in SETTING_NAMES})


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


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common, by = _common_options(), _by_option()

    def command(name: str, summary: str, *, audited: bool = False) -> argparse.ArgumentParser:
        parents = [common, by] if audited else [common]
        return commands.add_parser(name, help=summary, description=summary, parents=parents)

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


#: Functions ``func(args)`` that ``sandboxq worker`` calls with its parsed
#: command line once the handler modules are imported, before the worker
#: is made: a module that knows where its jobs come from settles
#: ``args.queues`` and ``args.url`` there (:mod:`sandboxq.contrib.django`
#: reads them from Django's ``TASKS``). A ValueError one raises stops the
#: worker as a boot error, with its message.
WORKER_ARGUMENT_HOOKS: list[Callable[[argparse.Namespace], None]] = []


def on_worker_arguments(func: Callable[[argparse.Namespace], None]) -> None:
    """Register ``func`` in :data:`WORKER_ARGUMENT_HOOKS` (once)."""
    if func not in WORKER_ARGUMENT_HOOKS:
        WORKER_ARGUMENT_HOOKS.append(func)


def import_modules(names: Sequence[str]) -> None:
    """Import the handler modules (before forking, so children start warm)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        importlib.import_module(name)


NOT_LINUX = (
    "the worker runs on Linux only (it forks its children, reads /proc and asks the "
    "kernel who wrote to its pipes), and this is {platform}: run it in a Linux container "
    "or VM (see the Installation guide); Queue, AsyncQueue and the commands that only "
    "talk to Redis work here"
)


def run_worker(args: argparse.Namespace) -> int:
    from sandboxq.worker.exit_codes import EXIT_BOOT_ERROR, EXIT_INTERNAL_ERROR, BootError
    from sandboxq.worker.parent import Worker

    logs.setup(args.log_format, args.log_level)
    log_version()
    if not sys.platform.startswith("linux"):
        logs.log.error("cannot start: %s", NOT_LINUX.format(platform=sys.platform))
        return EXIT_BOOT_ERROR
    modules = args.modules or [m for m in os.environ.get("SANDBOXQ_APP", "").split(",") if m]
    if not modules:
        logs.log.error(
            "no handler module: name one (sandboxq worker myapp.jobs) or set SANDBOXQ_APP"
        )
        return EXIT_BOOT_ERROR
    try:
        import_modules(modules)
    except Exception:
        logs.log.error(
            "cannot import handler module(s) %s:\n%s", ", ".join(modules), traceback.format_exc()
        )
        return EXIT_BOOT_ERROR
    try:
        for settle in WORKER_ARGUMENT_HOOKS:
            settle(args)
    except ValueError as exc:
        logs.log.error("cannot start: %s", exc)
        return EXIT_BOOT_ERROR
    try:
        worker = Worker(args.queues, settings=worker_settings(args))
    except (BootError, ValueError) as exc:
        logs.log.error("cannot start: %s", exc)
        return EXIT_BOOT_ERROR
    try:
        return worker.run()
    except BootError as exc:
        logs.log.error("cannot start: %s", exc)
        return EXIT_BOOT_ERROR
    except Exception:
        # Not exit code 1, which says "stopped with jobs handed back".
        logs.log.error("the worker stopped on an unexpected error:\n%s", traceback.format_exc())
        return EXIT_INTERNAL_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    Parser.json_errors = "--json" in arguments
    try:
        code = dispatch(build_parser().parse_args(arguments))
        sys.stdout.flush()  # here, where a reader that went away is caught
        return code
    except BrokenPipeError:
        # The reader went away (`sandboxq jobs Q | head -1`): stop quietly.
        # stdout points at /dev/null from here on, so the interpreter's last
        # flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return run_worker(args)
    if args.command == "schedules":
        return show_schedules(args)
    if args.command == "dashboard":
        from sandboxq.dashboard.server import run as run_dashboard

        return run_dashboard(args)
    if args.command == "dev":
        from sandboxq.admin import run_dev

        return run_dev(args)
    if args.command in ADMIN_COMMANDS:
        from sandboxq.admin import run as run_admin

        return run_admin(args)
    from sandboxq.demo import run as run_demo

    return run_demo(args.jobs, args.procs, args.dir)


def show_schedules(args: argparse.Namespace) -> int:
    from sandboxq.admin import EXIT_USAGE, fail, format_time, print_json, print_table
    from sandboxq.errors import ConnectionFailed
    from sandboxq.queue import Queue

    try:
        found = Queue(args.queue, url=args.url).schedules()
    except (ConnectionFailed, ValueError, redis.RedisError) as exc:
        return fail(str(exc), EXIT_USAGE, args.json)
    if args.json:
        print_json(found)
        return 0
    rows = []
    for s in found:
        when = f"cron {s['cron']} {s['tz']}" if s["cron"] else f"every {s['every']:g}s"
        runs = f"{s['count']}/{s['limit']}" if s["limit"] else str(s["count"])
        rows.append((s["key"], s["name"], when, format_time(s["next_run"]), runs, s["misfire"]))
    print_table(rows, ("KEY", "JOB", "WHEN", "NEXT RUN", "RUNS", "MISFIRE"))
    if not found:
        print(f"(no schedules on queue {args.queue!r})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
