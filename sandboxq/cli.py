"""The ``sandboxq`` command: run a worker (``worker``), a local Redis for
development (``dev``) or the demo, and look at and administer queues and jobs
(``stats``, ``jobs``, ``job``, ``retry``, ``remove``, ``cancel``, ``pause``,
``resume``, ``clean``, ``workers``, ``add``, ``schedules``), or serve the web
``dashboard``."""

# This module builds the parser, runs the worker and dispatches: the options of
# ``sandboxq worker`` are WORKER_OPTIONS (one table, defaults from
# WorkerSettings); the other commands' parsers are in sandboxq.cli_commands, the
# argparse types in sandboxq.cli_values, and sandboxq.admin implements the
# admin commands.

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import redis

from sandboxq import logs
from sandboxq.cli_commands import (
    ADMIN_COMMANDS,
    add_admin_commands,
    add_dashboard_command,
    add_dev_command,
)
from sandboxq.cli_values import (
    non_negative_int,
    parse_async_concurrency,
    parse_backoff,
    parse_duration,
    parse_json,
    parse_procs,
    parse_rate,
    parse_size,
    positive_int,
    positive_seconds,
)

if TYPE_CHECKING:
    from sandboxq.worker.settings import WorkerSettings

__all__ = [
    "ADMIN_COMMANDS",
    "WORKER_OPTIONS",
    "add_worker_options",
    "build_parser",
    "main",
    "non_negative_int",
    "on_worker_arguments",
    "parse_async_concurrency",
    "parse_backoff",
    "parse_duration",
    "parse_json",
    "parse_procs",
    "parse_rate",
    "parse_size",
    "positive_int",
    "positive_seconds",
    "run_worker",
    "worker_settings",
]


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
