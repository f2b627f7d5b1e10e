"""``sandboxq dev``: a persistent Redis for development, under
``<dir>/dev-redis``, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import redis

from sandboxq.console import EXIT_FAILED, EXIT_OK, fail
from sandboxq.local_redis import LocalRedis

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_dev(args: argparse.Namespace) -> int:
    """Run a persistent Redis under ``<dir>/dev-redis`` until SIGINT or SIGTERM."""
    server = LocalRedis(Path(args.dir) / "dev-redis", persistent=True, port=args.port)
    if _answers(server):
        return fail(f"a Redis is running in {server.directory} already", EXIT_FAILED)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        return fail(f"cannot start Redis: {exc}", EXIT_FAILED)
    try:
        return serve_until_signal(server)
    finally:
        server.stop()


def _answers(server: LocalRedis) -> bool:
    if not server.socket.exists():
        return False
    client = redis.Redis(unix_socket_path=str(server.socket))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def serve_until_signal(server: LocalRedis) -> int:
    """Print the export line, wait for a stop signal (or Redis exiting on its
    own), then stop Redis. Signals are blocked and taken with sigwait: no
    handler can interrupt the clean stop halfway."""
    assert server.process is not None
    watched = {*_STOP_SIGNALS, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        print(f"export SANDBOXQ_REDIS_URL={shlex.quote(server.url)}", flush=True)
        print(
            f"sandboxq dev: Redis in {server.directory} (AOF on); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while server.process.poll() is None:
            if signal.sigwait(watched) != signal.SIGCHLD:
                server.stop()
                print("sandboxq dev: Redis stopped, data kept", file=sys.stderr)
                return EXIT_OK
        code = server.process.returncode
        if code == 0:  # told to shut down from elsewhere (SHUTDOWN, the terminal's Ctrl-C)
            return EXIT_OK
        log = server.directory / "redis.log"
        return fail(f"redis-server exited with code {code}; see {log}", EXIT_FAILED)
    finally:
        _unblock_dropping_pending(old_mask)


def _unblock_dropping_pending(old_mask: Iterable[int]) -> None:
    """Restore the signal mask; a second Ctrl-C still pending is dropped."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _STOP_SIGNALS}
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)
