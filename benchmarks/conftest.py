"""Benchmark fixtures: a private redis-server, the two hot-path implementations,
fresh queues per round, and the native/pure ratio table printed at the end.

Run with ``python -m pytest benchmarks -p no:timeout`` (see README.md). The
``bench_*.py`` files are collected by ``pytest_collect_file`` below, so no
``-o python_files=...`` is needed.

No benchmark asserts anything about timing: the machine is shared, so only
ratios measured in the same run mean something, and they are printed, never
checked.
"""

from __future__ import annotations

import fnmatch
import importlib
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

import sandboxq.fast
import sandboxq.queue
from sandboxq import Queue
from sandboxq.local_redis import LocalRedis

#: The names ``sandboxq.fast`` binds from the chosen implementation; the rest of
#: the package reaches them as ``fast.<name>``, so patching them on the module
#: switches the implementation for everything in this process.
HOT_PATH_NAMES = ("dump_json", "decode_job_flat", "decode_job_mapping", "decode_fetched")

IMPLEMENTATIONS = {"native": "sandboxq._fast", "pure": "sandboxq._fast_py"}


# -- collection ----------------------------------------------------------------
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` here without touching the project's
    ``python_files``. Files pytest collects anyway (given by path on the
    command line, or matching ``-o python_files=...``) are left to it, so
    nothing is collected twice."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, pattern) for pattern in patterns):
        return None
    module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
    return module


# -- redis ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A private redis-server on a unix socket in a temp dir, no persistence."""
    server = LocalRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    """One connection for the whole session, so no timed round pays a connect."""
    conn = redis.Redis.from_url(redis_server.url)
    yield conn
    conn.close()


class QueueFactory:
    """Fresh queues on one shared connection. ``new()`` deletes the queue it
    handed out before (untimed, from a pedantic ``setup``), so each round
    starts on an empty queue and Redis does not grow across rounds."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.current: Queue | None = None

    def new(self) -> Queue:
        self.close()
        self.current = Queue(f"bench-{uuid.uuid4().hex[:10]}", connection=self.client)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.obliterate(force=True)
            self.current = None


@pytest.fixture
def queues(redis_client: redis.Redis) -> Iterator[QueueFactory]:
    factory = QueueFactory(redis_client)
    yield factory
    factory.close()


# -- implementations -----------------------------------------------------------
def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(IMPLEMENTATIONS[name])
    except ImportError as exc:
        pytest.fail(
            f"the native extension sandboxq._fast did not build or import ({exc}); "
            "a native vs pure comparison needs it"
        )


def _check_no_direct_bindings() -> None:
    """Patching ``sandboxq.fast`` only switches implementations if no other
    module bound the functions by name (``from sandboxq.fast import dump_json``).
    Fail loudly if a loaded sandboxq module did, rather than measure the same
    code twice. Only loaded modules are scanned: importing the rest could run
    side effects (``sandboxq.__main__``), and code that is not loaded cannot
    take part in a benchmark."""
    originals = {id(getattr(sandboxq.fast, n)) for n in HOT_PATH_NAMES}
    skip = {"sandboxq.fast", *IMPLEMENTATIONS.values()}
    for mod_name, module in list(sys.modules.items()):
        if not mod_name.startswith("sandboxq.") or mod_name in skip or module is None:
            continue
        for attr, value in vars(module).items():
            if id(value) in originals:
                pytest.fail(
                    f"{mod_name}.{attr} binds a hot-path function directly; patching "
                    "sandboxq.fast would not reach it. Bench through sandboxq.fast.<name>."
                )


@dataclass(frozen=True)
class Impl:
    name: str  # "native" or "pure"
    module: ModuleType


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Impl:
    """Each hot-path implementation in turn, installed in ``sandboxq.fast`` for
    the test (so ``Queue`` uses it too), restored afterwards."""
    _check_no_direct_bindings()
    module = _load(request.param)
    for name in HOT_PATH_NAMES:
        monkeypatch.setattr(sandboxq.fast, name, getattr(module, name))
    assert sandboxq.queue.fast is sandboxq.fast
    return Impl(request.param, module)


# -- ratio table ---------------------------------------------------------------
@dataclass
class Rate:
    per_second: float  # from the median round
    best_per_second: float  # from the fastest round
    unit: str


_RATES = pytest.StashKey[dict[str, dict[str, Rate]]]()


@pytest.fixture
def record_rate(request: pytest.FixtureRequest, benchmark: Any) -> Callable[..., None]:
    """``record_rate(label, impl_name, per_round=1, unit="calls")``, called after
    the benchmark ran: turns the median time of a round into units/s, stores it
    in ``benchmark.extra_info`` and keeps it for the summary table."""
    rates = request.config.stash.setdefault(_RATES, {})

    def record(label: str, impl_name: str, per_round: int = 1, unit: str = "calls") -> None:
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
            return
        stats = benchmark.stats.stats
        per_second = per_round / stats.median
        benchmark.extra_info[f"{unit}_per_s"] = round(per_second, 1)
        benchmark.extra_info[f"{unit}_per_round"] = per_round
        rates.setdefault(label, {})[impl_name] = Rate(per_second, per_round / stats.min, unit)

    return record


def _fmt(rate: Rate | None) -> str:
    return "n/a" if rate is None else f"{rate.per_second:,.0f} {rate.unit}/s"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rates = config.stash.get(_RATES, {})
    if not rates:
        return
    tr = terminalreporter
    tr.section("native vs pure (medians of this run; ratio = native / pure throughput)")
    width = max(len(label) for label in rates)
    for label, by_impl in rates.items():
        native, pure = by_impl.get("native"), by_impl.get("pure")
        ratio = (
            "n/a"
            if native is None or pure is None
            else f"{native.per_second / pure.per_second:.2f}x"
            f" (fastest rounds: {native.best_per_second / pure.best_per_second:.2f}x)"
        )
        tr.write_line(f"{label:<{width}}: native {_fmt(native)}, pure {_fmt(pure)}, ratio {ratio}")
