"""How long an install takes and how much it puts on disk: sandboxq's three
artifacts against the Redis queues people install instead.

    .venv/bin/python benchmarks/install_footprint.py [--rounds 3] [--dist DIR]

``--dist`` holds sandboxq's sdist and wheels (``make wheels`` writes dist/;
without it they are built into a temp folder with tools/build_dists.py).
Every package and its dependencies are downloaded once into a local
wheelhouse, so the network is out of the figures. Then each one is
installed, ``rounds`` times, into a fresh virtualenv with
``pip install --no-index --no-cache-dir``, and timed; its size is what the
install added to site-packages (and bin/). The sdist is installed with no
compiler on PATH: a pure-Python install, built from source as a slim image
would build it. Figures are medians, and ratios are to the same run's
native wheel: the machine is shared, so only same-run ratios compare.
Not a pytest benchmark: each round builds virtualenvs, which pytest-benchmark
would time too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ["rq", "celery", "dramatiq", "arq"]


def sandboxq_artifacts(dist: Path | None, scratch: Path) -> dict[str, Path]:
    if dist is None:
        dist = scratch / "dist"
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "build_dists.py"), str(dist)],
            check=True,
            capture_output=True,
        )
    return {
        "sandboxq (native wheel)": next(dist.glob("sandboxq-*-manylinux*.whl")),
        "sandboxq (pure wheel)": next(dist.glob("sandboxq-*-py3-none-any.whl")),
        "sandboxq (sdist, no compiler)": next(dist.glob("sandboxq-*.tar.gz")),
    }


def fill_wheelhouse(wheelhouse: Path, targets: list[str]) -> None:
    """Every target with its dependencies, and what an sdist build needs."""
    pip = [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheelhouse)]
    for target in [*targets, "setuptools>=77"]:
        subprocess.run([*pip, target], check=True, capture_output=True)


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def install_once(target: str, wheelhouse: Path, scratch: Path) -> tuple[float, int]:
    """Seconds to install ``target`` into a new venv, and bytes it added."""
    venv = Path(tempfile.mkdtemp(dir=scratch))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    before = tree_bytes(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "VIRTUAL_ENV")}
    env["PATH"] = str(venv / "bin")  # no compiler: the sdist installs its pure twin
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir"]
    command += ["--no-index", "--find-links", str(wheelhouse), target]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    seconds = time.perf_counter() - started
    return seconds, tree_bytes(venv) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dist", type=Path, help="folder with sandboxq's sdist and wheels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="install-footprint-") as tmp:
        scratch = Path(tmp)
        targets = {name: str(path) for name, path in sandboxq_artifacts(args.dist, scratch).items()}
        targets.update({name: name for name in PEERS})
        wheelhouse = scratch / "wheelhouse"
        fill_wheelhouse(wheelhouse, list(targets.values()))
        # Round-robin, so that a busy spell of the machine hits every package alike
        rounds: dict[str, list[tuple[float, int]]] = {name: [] for name in targets}
        for round_number in range(args.rounds):
            for name, target in targets.items():
                rounds[name].append(install_once(target, wheelhouse, scratch))
            print(f"  round {round_number + 1} of {args.rounds} done", file=sys.stderr)
        results = {
            name: (statistics.median(s for s, _ in got), statistics.median(b for _, b in got) / 1e6)
            for name, got in rounds.items()
        }
    base_seconds, base_mb = results["sandboxq (native wheel)"]
    print(f"{'package':32} {'install s':>9} {'ratio':>6} {'size MB':>8} {'ratio':>6}")
    for name, (seconds, megabytes) in results.items():
        print(
            f"{name:32} {seconds:9.2f} {seconds / base_seconds:6.2f} "
            f"{megabytes:8.1f} {megabytes / base_mb:6.2f}"
        )


if __name__ == "__main__":
    main()
