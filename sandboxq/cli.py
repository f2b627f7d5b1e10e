"""The ``sandboxq`` command: ``worker`` and ``demo``."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence

import orjson

from sandboxq import logs

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
    return int(match.group(1)), amount * unit


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandboxq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a sandboxed worker")
    worker.add_argument(
        "modules",
        nargs="*",
        metavar="MODULE",
        help="modules that register handlers (default: $SANDBOXQ_APP)",
    )
    worker.add_argument(
        "-q",
        "--queue",
        action="append",
        dest="queues",
        metavar="QUEUE",
        help="queue to serve (repeatable; default: the handlers' queues)",
    )
    worker.add_argument(
        "--procs",
        type=parse_procs,
        default="auto",
        help="children: a number, or auto (usable CPUs) [auto]",
    )
    worker.add_argument("--url", help="Redis URL [$SANDBOXQ_REDIS_URL or redis://localhost:6379/0]")
    worker.add_argument(
        "--max-memory-per-child",
        type=parse_size,
        metavar="SIZE",
        help="kill a child whose RSS goes over this, failing its job (e.g. 512M)",
    )
    worker.add_argument(
        "--max-jobs-per-child", type=int, metavar="N", help="replace a child after N jobs"
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long SIGTERM waits for jobs in flight [30]",
    )
    worker.add_argument(
        "--lease",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="job lease; renewed by the parent every third of it [30]",
    )
    worker.add_argument(
        "--max-stalls",
        type=int,
        default=1,
        metavar="N",
        help="fail a job after its worker died more than N times [1]",
    )
    worker.add_argument(
        "--default-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="timeout of jobs whose handler and options set none",
    )
    worker.add_argument(
        "--kill-grace",
        type=positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="after a timeout's SIGTERM, wait this long before SIGKILL [2]",
    )
    worker.add_argument(
        "--rate-limit",
        type=parse_rate,
        metavar="N/PERIOD",
        help="at most N job starts per period across all workers, e.g. 100/60s, 20/s, 5/2m "
        "(stored on the queues, like Queue.set_rate_limit)",
    )
    worker.add_argument("--log-format", choices=("text", "json"), default="text")
    worker.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )

    demo = commands.add_parser("demo", help="run a demo on a private, embedded Redis")
    demo.add_argument("--jobs", type=int, default=200, help="thumbnail jobs to run [200]")
    demo.add_argument("--procs", type=parse_procs, default="auto")
    demo.add_argument("--dir", default=".sandboxq", help="where Redis and outputs go")

    schedules = commands.add_parser("schedules", help="list a queue's schedules")
    schedules.add_argument("queue", metavar="QUEUE")
    schedules.add_argument("--url", help="Redis URL [$SANDBOXQ_REDIS_URL]")
    schedules.add_argument("--json", action="store_true", help="print JSON, for scripts")
    return parser


def import_modules(names: Sequence[str]) -> None:
    """Import the handler modules (before forking, so children start warm)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        importlib.import_module(name)


def run_worker(args: argparse.Namespace) -> int:
    from sandboxq.worker.parent import EXIT_BOOT_ERROR, BootError, Worker

    logs.setup(args.log_format, args.log_level)
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
        worker = Worker(
            args.queues,
            procs=args.procs,
            url=args.url,
            max_memory_per_child=args.max_memory_per_child,
            max_jobs_per_child=args.max_jobs_per_child,
            shutdown_timeout=args.shutdown_timeout,
            lease=args.lease,
            max_stalls=args.max_stalls,
            default_timeout=args.default_timeout,
            kill_grace=args.kill_grace,
            rate_limit=args.rate_limit,
        )
        return worker.run()
    except (BootError, ValueError) as exc:
        logs.log.error("cannot start: %s", exc)
        return EXIT_BOOT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "schedules":
        return show_schedules(args)
    from sandboxq.demo import run as run_demo

    return run_demo(args.jobs, args.procs, args.dir)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def show_schedules(args: argparse.Namespace) -> int:
    from sandboxq.errors import ConnectionFailed
    from sandboxq.queue import Queue

    try:
        found = Queue(args.queue, url=args.url).schedules()
    except ConnectionFailed as exc:
        print(f"sandboxq: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return 0
    rows = [("KEY", "JOB", "WHEN", "NEXT RUN", "RUNS", "MISFIRE")]
    for s in found:
        when = f"cron {s['cron']} {s['tz']}" if s["cron"] else f"every {s['every']:g}s"
        runs = f"{s['count']}/{s['limit']}" if s["limit"] else str(s["count"])
        rows.append((s["key"], s["name"], when, _when(s["next_run"]), runs, s["misfire"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if not found:
        print(f"(no schedules on queue {args.queue!r})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
