"""Benchmark fixtures: a private redis-server, the two hot-path implementations,
fresh queues per round, and the native/pure ratio table printed at the end.

Run with ``python -m pytest benchmarks -p no:timeout`` (see README.md). The
``bench_*.py`` files are collected by ``pytest_collect_file`` below, so no
``-o python_files=...`` is needed.

The worker benchmarks also get a real ``sandboxq worker`` subprocess
(``workers``), a measure of how busy other processes kept the machine
(``ForeignLoad``), and a second summary section for figures that are not a
native/pure pair (``record_summary``); lines labelled ``goal N`` go to a last
section, the issue's goals. ``RedisCpu`` reads what the redis-server spent.

No benchmark asserts anything about timing: the machine is shared, so only
ratios measured in the same run mean something, and they are printed, never
checked.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

import sandboxq.fast
import sandboxq.job
from sandboxq import Queue
from sandboxq.local_redis import LocalRedis

#: The names ``sandboxq.fast`` binds from the chosen implementation; the rest of
#: the package reaches them as ``fast.<name>``, so patching them on the module
#: switches the implementation for everything in this process.
HOT_PATH_NAMES = ("decode_job_flat", "decode_job_mapping", "decode_fetched")

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
def redis_server(sandboxq_redis_server: LocalRedis) -> LocalRedis:
    """A private redis-server on a unix socket in a temp dir, no persistence:
    the pytest plugin's."""
    return sandboxq_redis_server


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


#: The commands that run a Lua script, as INFO commandstats names them.
SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


@dataclass(frozen=True)
class RedisCpu:
    """What the redis-server has spent so far, or between two snapshots
    (``later.since(earlier)``).

    ``script_usec`` is INFO commandstats' time in the commands that run
    scripts (EVALSHA...). It includes the commands the scripts call, which
    commandstats also counts under their own names (``cmdstat_hset``...), so
    adding every command's usec would count them twice. ``process_seconds``
    is the server's CPU time (INFO cpu): everything, with reading requests and
    writing replies, which commandstats leaves out."""

    script_usec: int
    script_calls: int
    process_seconds: float

    @classmethod
    def read(cls, client: redis.Redis) -> RedisCpu:
        stats: Any = client.info("commandstats")
        cpu: Any = client.info("cpu")
        scripts = [stats.get(f"cmdstat_{name}", {}) for name in SCRIPT_COMMANDS]
        return cls(
            script_usec=sum(int(s.get("usec", 0)) for s in scripts),
            script_calls=sum(int(s.get("calls", 0)) for s in scripts),
            process_seconds=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        )

    def since(self, before: RedisCpu) -> RedisCpu:
        return RedisCpu(
            self.script_usec - before.script_usec,
            self.script_calls - before.script_calls,
            self.process_seconds - before.process_seconds,
        )


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
    assert sandboxq.job.fast is sandboxq.fast
    return Impl(request.param, module)


# -- a real worker --------------------------------------------------------------
#: The repository root: the worker runs there so ``benchmarks.bench_jobs`` imports.
REPO_ROOT = Path(__file__).resolve().parent.parent

_TICK = os.sysconf("SC_CLK_TCK")

#: What the worker prints on stderr once its first Redis round trip succeeded.
#: It is logged at INFO, so ``--log-level WARNING`` (what the benchmarks run
#: with, to keep per-job log lines out of the figures) does not print it.
READY_LINE = "sandboxq worker ready"


def blocked_waiters(client: redis.Redis) -> set[str]:
    """Client ids blocked in BZPOPMIN: an idle worker's wait for new jobs."""
    return {
        c["id"]
        for c in client.client_list()
        if c.get("cmd") == "bzpopmin" and "b" in c.get("flags", "")
    }


def spawn_worker(
    url: str,
    env: dict[str, str],
    *,
    procs: int = 2,
    pure: bool = False,
    log_level: str = "WARNING",
    module: str = "benchmarks.bench_jobs",
    args: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """``python -m sandboxq worker MODULE`` on ``url``, from the repository
    root, with ``env`` added to this process's environment and its stderr
    piped; ``pure`` sets SANDBOXQ_NO_EXTENSIONS=1 (else it is unset)."""
    full_env = dict(os.environ, SANDBOXQ_REDIS_URL=url, **env)
    full_env.pop("SANDBOXQ_NO_EXTENSIONS", None)
    if pure:
        full_env["SANDBOXQ_NO_EXTENSIONS"] = "1"
    command = [sys.executable, "-m", "sandboxq", "worker", module, "--procs", str(procs)]
    return subprocess.Popen(
        [*command, "--log-level", log_level, *args],
        cwd=REPO_ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


class WorkerProcess:
    """``python -m sandboxq worker benchmarks.bench_jobs`` as a subprocess on
    the private Redis, serving ``queue``. ``pure`` sets
    ``SANDBOXQ_NO_EXTENSIONS=1`` in its environment. A thread keeps draining
    its stderr into ``lines``, so the worker never blocks on a full pipe."""

    def __init__(
        self,
        url: str,
        client: redis.Redis,
        queue: str,
        *,
        procs: int = 2,
        pure: bool = False,
        log_level: str = "WARNING",
        module: str = "benchmarks.bench_jobs",
    ) -> None:
        self.client = client
        self.queue = queue
        self.log_level = log_level
        # Waits already blocked before this worker started are not its own.
        self._foreign = blocked_waiters(client)
        self.lines: list[str] = []
        self.ready_line = threading.Event()
        self.process = spawn_worker(
            url,
            {"SANDBOXQ_BENCH_QUEUE": queue},
            procs=procs,
            pure=pure,
            log_level=log_level,
            module=module,
        )
        self._reader = threading.Thread(target=self._drain, name="worker-stderr", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if READY_LINE in line:
                self.ready_line.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the worker is up and idle: blocked in BZPOPMIN, waiting for
        jobs, which it only does after its first successful round trip (when
        it would log ``READY_LINE``) and once its queues came back empty. At
        INFO or DEBUG the ready line must have been printed as well."""
        wants_line = self.log_level in ("INFO", "DEBUG")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"the worker exited with {self.process.returncode} before it was idle:\n"
                    + self.stderr
                )
            if (not wants_line or self.ready_line.is_set()) and (
                blocked_waiters(self.client) - self._foreign
            ):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the worker was not idle after {timeout} s:\n{self.stderr}")
            time.sleep(0.005)

    def parent_cpu_seconds(self) -> float:
        """CPU time the worker's parent process has used so far (its own,
        not its children's): where the hot-path implementation runs."""
        fields = _stat_fields(self.process.pid)
        return (int(fields[11]) + int(fields[12])) / _TICK

    def child_pids(self) -> set[int]:
        """The worker parent's child processes now (the kernel's list, from
        every thread of the parent; a child not yet reaped is in it)."""
        pids: set[int] = set()
        task_dir = f"/proc/{self.process.pid}/task"
        for task in os.listdir(task_dir):
            # A thread that ended since the listing has no file any more.
            with contextlib.suppress(OSError), open(f"{task_dir}/{task}/children", "rb") as kids:
                pids.update(int(pid) for pid in kids.read().split())
        return pids

    def children_cpu_seconds(self) -> float:
        """CPU time the worker's children have used so far: each live (or
        not yet reaped) child's own utime + stime, plus what the parent's
        reaped children used (its cutime + cstime), so a child replaced
        between two readings still counts. Grandchildren count only once a
        child reaped them."""
        used = 0
        for pid in self.child_pids():
            with contextlib.suppress(OSError):  # reaped since the listing
                fields = _stat_fields(pid)
                used += int(fields[11]) + int(fields[12])
        fields = _stat_fields(self.process.pid)
        return (used + int(fields[13]) + int(fields[14])) / _TICK

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain and exit), then its exit code. Also waits until its
        blocking wait left Redis, so the next worker's is the only one."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"the worker did not stop within {timeout} s of SIGTERM")
        self._reader.join(5.0)
        deadline = time.monotonic() + 5.0
        while blocked_waiters(self.client) - self._foreign and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.process.returncode


def _stat_fields(pid: int) -> list[bytes]:
    """``/proc/<pid>/stat`` after the command name: index 0 is the state,
    11 and 12 utime and stime, 13 and 14 cutime and cstime (in ticks)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()


def _tree_cpu_seconds() -> float:
    """CPU time of this process and every live descendant (redis-server, the
    worker and its children, Pool processes), including what they reaped."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone already
        ppid = int(fields[1])
        used = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        stats[int(entry)] = (ppid, used / _TICK)
    ours, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in ours:
                ours.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in ours if pid in stats)


def _machine_busy_seconds() -> float:
    """CPU time every CPU spent busy (or stolen by the hypervisor) since boot."""
    with open("/proc/stat", "rb") as stat:
        fields = [int(f) for f in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICK


class ForeignLoad:
    """``with ForeignLoad() as load: ...``, then ``load.share``: the part of
    the machine's CPUs that processes outside this test run used (or the
    hypervisor stole) meanwhile. The machine is shared, and a figure taken
    while it was busy elsewhere is not worth comparing."""

    share = 0.0

    def __enter__(self) -> ForeignLoad:
        self._start = (time.monotonic(), _machine_busy_seconds(), _tree_cpu_seconds())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, busy, ours = self._start
        wall = time.monotonic() - wall
        foreign = (_machine_busy_seconds() - busy) - (_tree_cpu_seconds() - ours)
        self.share = max(foreign, 0.0) / (wall * (os.cpu_count() or 1))


class WorkerFactory:
    def __init__(self, url: str, client: redis.Redis) -> None:
        self.url = url
        self.client = client
        self.started: list[WorkerProcess] = []

    def start(self, queue: str, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(self.url, self.client, queue, **options)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                with contextlib.suppress(BaseException):  # the test failed already
                    worker.stop(10.0)
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


@pytest.fixture
def workers(redis_server: LocalRedis, redis_client: redis.Redis) -> Iterator[WorkerFactory]:
    """``workers.start(queue, pure=False, procs=2)``: real worker subprocesses
    on the private Redis; any still running at the end of the test are stopped."""
    factory = WorkerFactory(redis_server.url, redis_client)
    yield factory
    factory.stop_all()


# -- ratio table ---------------------------------------------------------------
@dataclass
class Rate:
    per_second: float  # from the median round
    best_per_second: float  # from the fastest round
    unit: str
    one_round: bool = False  # a single measurement: no "fastest round" to show


_RATES = pytest.StashKey[dict[str, dict[str, Rate]]]()
_SUMMARY = pytest.StashKey[dict[str, str]]()


@pytest.fixture
def record_rate(request: pytest.FixtureRequest, benchmark: Any) -> Callable[..., None]:
    """``record_rate(label, impl_name, per_round=1, unit="calls", seconds=None)``,
    called after the benchmark ran: turns the median time of a round (or
    ``seconds``, a time the test measured itself) into units/s, stores it in
    ``benchmark.extra_info`` and keeps it for the summary table."""
    rates = request.config.stash.setdefault(_RATES, {})

    def record(
        label: str,
        impl_name: str,
        per_round: int = 1,
        unit: str = "calls",
        seconds: float | None = None,
    ) -> None:
        if seconds is not None:
            rate = Rate(per_round / seconds, per_round / seconds, unit, one_round=True)
        elif benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
            return
        else:
            stats = benchmark.stats.stats
            rate = Rate(per_round / stats.median, per_round / stats.min, unit)
        benchmark.extra_info[f"{unit}_per_s"] = round(rate.per_second, 1)
        benchmark.extra_info[f"{unit}_per_round"] = per_round
        rates.setdefault(label, {})[impl_name] = rate

    return record


@pytest.fixture
def record_summary(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``record_summary(label, text)``: one line of the worker section printed
    after the native vs pure table. Labels starting with ``goal N`` (N a
    number) go to a last section of their own, ordered by N."""
    lines = request.config.stash.setdefault(_SUMMARY, {})

    def record(label: str, text: str) -> None:
        lines.pop(label, None)  # a line recorded again moves to the end
        lines[label] = text

    return record


def _fmt(rate: Rate | None) -> str:
    return "n/a" if rate is None else f"{rate.per_second:,.0f} {rate.unit}/s"


def _ratio(native: Rate | None, pure: Rate | None) -> str:
    if native is None or pure is None:
        return "n/a"
    ratio = f"{native.per_second / pure.per_second:.2f}x"
    if native.one_round or pure.one_round:
        return f"{ratio} (one round each)"
    return f"{ratio} (fastest rounds: {native.best_per_second / pure.best_per_second:.2f}x)"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tr = terminalreporter
    rates = config.stash.get(_RATES, {})
    if rates:
        tr.section("native vs pure (medians of this run; ratio = native / pure throughput)")
        width = max(len(label) for label in rates)
        for label, by_impl in rates.items():
            native, pure = by_impl.get("native"), by_impl.get("pure")
            tr.write_line(
                f"{label:<{width}}: native {_fmt(native)}, pure {_fmt(pure)}, "
                f"ratio {_ratio(native, pure)}"
            )
    lines = config.stash.get(_SUMMARY, {})
    goals = {label: text for label, text in lines.items() if label.startswith("goal ")}
    others = {label: text for label, text in lines.items() if label not in goals}
    _write_section(tr, "worker (this run, --procs 2; see benchmarks/README.md)", others)
    # The goals last, in its order, each beside its bound: the block
    # to read first. A goal whose tests did not run has no line.
    by_number = sorted(goals.items(), key=lambda item: int(item[0].split()[1]))
    _write_section(tr, "goals (issue #28, speed third round; this run only)", dict(by_number))


def _write_section(tr: Any, title: str, lines: dict[str, str]) -> None:
    if not lines:
        return
    tr.section(title)
    width = max(len(label) for label in lines)
    for label, text in lines.items():
        tr.write_line(f"{label:<{width}}: {text}")
