"""Real Redis topologies on loopback: a Redis Cluster of masters with
replicas, and a master with a replica watched by Sentinels.

For the Cluster and Sentinel support to come, tested against what they will
meet in production: nothing here mocks Redis. Every node is a real
``redis-server`` (the binary :func:`sandboxq.local_redis.find_redis_server`
finds; Sentinel is the same binary run with ``--sentinel``), listening on
127.0.0.1 only, with its config, its log and its data in a temp dir of its
own.

The cluster is formed by hand, the way ``redis-cli --cluster create`` does
it, so no redis-cli is needed: CLUSTER ADDSLOTS, SET-CONFIG-EPOCH, MEET,
REPLICATE. The bundled server may be Redis 6.2, so nothing newer than 6.2 is
used (no CLUSTER ADDSLOTSRANGE).

Every wait polls server state against a deadline; a fixed sleep never
stands in for readiness. A wait that times out raises :class:`TopologyError`
with the tail of the log of the node it was waiting for. ``stop()`` ends
every process ever started, also after a start that failed halfway, and each
process is started with ``PR_SET_PDEATHSIG`` so that even a test run killed
outright leaves no redis-server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode as SeedNode
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from sandboxq.local_redis import find_redis_server

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
#: A cluster node also listens on port + 10000, for the cluster bus.
BUS_PORT_OFFSET = 10000
#: CLUSTER ADDSLOTS takes this many slots per call (a few calls per master).
ADDSLOTS_BATCH = 2048
#: The pause between two looks at server state while waiting for it.
POLL_SECONDS = 0.05
#: How long one admin command may take before the node counts as not ready.
ADMIN_SOCKET_TIMEOUT = 2.0
#: How many times a node whose port was taken meanwhile is started on another.
PORT_RETRIES = 5
#: How much of a node's log goes into an error.
LOG_TAIL_CHARS = 3000

_PR_SET_PDEATHSIG = 1
_LIBC: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):  # pragma: no branch
    with contextlib.suppress(OSError):
        # Loaded here, not in the forked child: dlopen after fork may deadlock.
        _LIBC = ctypes.CDLL(None, use_errno=True)


class TopologyError(RuntimeError):
    """A topology did not start, or did not reach the state waited for."""


class _NotYet(Exception):
    """Raised by a readiness check: the state waited for is not there yet.

    ``node`` is the node it is missing on, whose log an eventual timeout
    error shows."""

    def __init__(self, reason: str, node: RedisNode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies, so a
    run killed outright (no teardown) leaves no redis-server behind. (Linux
    ties this to the thread that started the process: start topologies from
    a thread that outlives them, as pytest fixtures do.)"""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _command(client: redis.Redis, *args: str | int) -> Any:
    """One raw command. The command name and its subcommand go as separate
    arguments, so redis-py applies no reply parser and the reply is what the
    server sent (INFO is the exception: redis-py parses it into a dict)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _quote(value: str | Path) -> str:
    """A redis.conf string argument."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _ephemeral_port_floor() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32768


def _can_bind(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def _table(text: str) -> dict[str, str]:
    """``key:value`` lines (CLUSTER INFO) as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _pairs(reply: Sequence[Any] | dict[Any, Any]) -> dict[str, str]:
    """A flat ``[key, value, key, value, ...]`` reply (SENTINEL MASTER) as a
    dict of strings; a RESP3 map too."""
    if isinstance(reply, dict):
        return {str(key): str(value) for key, value in reply.items()}
    return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


@dataclass(eq=False)
class RedisNode:
    """One redis-server process of a topology.

    ``role`` is ``"master"``, ``"replica"`` or ``"sentinel"``: the role the
    node was given, brought up to date by the waits of its topology (after a
    failover a former replica is a master). ``node_id``, ``master_id`` and
    ``slots`` (inclusive ranges) are set for cluster nodes only.
    """

    name: str
    role: str
    host: str = HOST
    port: int = 0
    directory: Path = field(default_factory=Path)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    node_id: str = ""
    master_id: str = ""
    slots: list[tuple[int, int]] = field(default_factory=list)
    _admin: redis.Redis | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def client(self, **options: Any) -> redis.Redis:
        """A new plain client of this node (the caller closes it)."""
        options.setdefault("socket_timeout", 5.0)
        return redis.Redis(host=self.host, port=self.port, **options)

    def admin(self) -> redis.Redis:
        """The topology's own client of this node: str replies, a short
        timeout, no retries (a wait retries by polling)."""
        if self._admin is None:
            self._admin = redis.Redis(
                host=self.host,
                port=self.port,
                decode_responses=True,
                protocol=2,
                socket_timeout=ADMIN_SOCKET_TIMEOUT,
                socket_connect_timeout=ADMIN_SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
        return self._admin

    def ask(self, *args: str | int) -> Any:
        """Run one admin command; a node that cannot answer raises _NotYet."""
        try:
            return _command(self.admin(), *args)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            raise _NotYet(f"{self}: {' '.join(map(str, args))}: {exc}", self) from exc

    def close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the node's log, and of its stdout/stderr (where Redis
        writes what goes wrong before it opens its log)."""
        parts = []
        for path in (self.log_path, self.directory / "stdout.log"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                if text.strip():
                    parts.append(f"--- {path} ---\n{text[-chars:]}")
        return "\n".join(parts) or f"--- no log in {self.directory} ---"

    def __str__(self) -> str:
        return f"{self.name} ({self.role}) {self.host}:{self.port}"


ConfigLines = Callable[[RedisNode], list[str]]


class _Topology:
    """Processes, ports and waits shared by the topologies."""

    #: Whether a node also needs port + 10000 free.
    _uses_cluster_bus = False

    def __init__(self, directory: str | os.PathLike[str], start_timeout: float) -> None:
        self.directory = Path(directory).resolve()
        self.start_timeout = start_timeout
        #: How long the last start() took, in seconds.
        self.startup_seconds: float | None = None
        self._binary = find_redis_server()
        #: Every node ever started, in order: stop() ends them all.
        self._spawned: list[RedisNode] = []
        self._config: dict[RedisNode, ConfigLines] = {}
        #: Nodes stopped on purpose (kill()): their death is no error.
        self._killed: set[RedisNode] = set()
        self._reserved_ports: set[int] = set()

    # -- processes ----------------------------------------------------------------
    def _pick_port(self, cluster_bus: bool) -> int:
        """A port free on 127.0.0.1 (and port + 10000 as well, for the cluster
        bus), below the ephemeral range so no outgoing connection takes it
        between this check and the server's bind."""
        offsets = (0, BUS_PORT_OFFSET) if cluster_bus else (0,)
        low, top = 11000, _ephemeral_port_floor() - offsets[-1]
        if top - low < 500:
            low, top = 20000, 65535 - offsets[-1]
        for _ in range(2000):
            port = random.randrange(low, top)
            wanted = [port + offset for offset in offsets]
            if any(p in self._reserved_ports for p in wanted):
                continue
            if all(_can_bind(p) for p in wanted):
                self._reserved_ports.update(wanted)
                return port
        raise TopologyError(f"no free port (and port + {offsets[-1]}) in {low}-{top}")

    def _spawn(self, name: str, role: str, config: ConfigLines) -> RedisNode:
        node = RedisNode(name=name, role=role)
        self._config[node] = config
        self._spawned.append(node)  # before the launch: stop() must see it
        self._launch(node)
        return node

    def _launch(self, node: RedisNode) -> None:
        """Start ``node`` on a fresh port, in a fresh dir named after it."""
        sentinel = node.role == "sentinel"
        node.close_admin()
        node.port = self._pick_port(cluster_bus=self._uses_cluster_bus)
        node.directory = self.directory / f"{node.name}-{node.port}"
        node.directory.mkdir(parents=True, exist_ok=True)
        conf = node.directory / ("sentinel.conf" if sentinel else "redis.conf")
        lines = [
            f"port {node.port}",
            f"bind {HOST}",
            "daemonize no",
            f"dir {_quote(node.directory)}",
            f"logfile {_quote(node.log_path)}",
            "loglevel notice",
            *self._config[node](node),
        ]
        conf.write_text("\n".join(lines) + "\n")
        argv = [self._binary, str(conf), *(["--sentinel"] if sentinel else [])]
        with open(node.directory / "stdout.log", "wb") as output:
            node.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=node.directory,
                preexec_fn=_die_with_parent,
            )

    def _await_up(self, nodes: Iterable[RedisNode], deadline: float) -> None:
        """Wait until each node answers PING. A node that exits because its
        port got taken since it was picked is started again on another."""
        pending = list(nodes)
        relaunches = 0
        while pending:
            for node in list(pending):
                assert node.process is not None
                if node.process.poll() is not None:
                    tail = node.log_tail()
                    if "already in use" in tail and relaunches < PORT_RETRIES * len(self._spawned):
                        relaunches += 1
                        self._launch(node)
                        continue
                    raise TopologyError(
                        f"{node} exited with {node.process.returncode} while starting\n{tail}"
                    )
                with contextlib.suppress(_NotYet):
                    if node.ask("PING"):
                        pending.remove(node)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise TopologyError(
                    f"{pending[0]} did not answer PING within {self.start_timeout}s\n"
                    f"{pending[0].log_tail()}"
                )
            time.sleep(POLL_SECONDS)  # polling readiness, not standing in for it

    def _wait(self, what: str, check: Callable[[], None], deadline: float) -> None:
        """Call ``check`` until it stops raising _NotYet; a TopologyError with
        the reason and the log of the node concerned once ``deadline`` passed,
        or as soon as a node dies that nobody killed."""
        started = time.monotonic()
        while True:
            for node in self._spawned:
                if node not in self._killed and not node.alive:
                    raise TopologyError(
                        f"{node} exited unexpectedly while waiting for {what}\n{node.log_tail()}"
                    )
            try:
                check()
                return
            except _NotYet as pending:
                if time.monotonic() >= deadline:
                    waited = time.monotonic() - started
                    logs = pending.node.log_tail() if pending.node else ""
                    raise TopologyError(
                        f"timed out after {waited:.1f}s waiting for {what}: {pending.reason}\n"
                        f"{logs}"
                    ) from None
            time.sleep(POLL_SECONDS)  # polling state, not standing in for it

    def _live(self, nodes: Iterable[RedisNode]) -> list[RedisNode]:
        return [node for node in nodes if node.alive]

    # -- lifecycle ----------------------------------------------------------------
    def kill(self, node: RedisNode) -> None:
        """SIGKILL ``node``: a crash, no goodbye to the others."""
        self._killed.add(node)
        node.close_admin()
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def stop(self) -> None:
        """End every process this topology started: SIGTERM, SIGKILL what
        is still there 10 s later. Safe to call twice, and after a failed start."""
        for node in self._spawned:
            node.close_admin()
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + 10.0
        for node in self._spawned:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def _start(self, form: Callable[[float], None]) -> None:
        began = time.monotonic()
        try:
            form(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# -- Redis Cluster ---------------------------------------------------------------------
@dataclass(frozen=True)
class _View:
    """One line of CLUSTER NODES: how one node sees another."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str
    link: str
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @classmethod
    def parse(cls, line: str) -> _View:
        fields = line.split()
        address = fields[1].split("@", 1)[0]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        return cls(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1] or 0),
            flags=frozenset(fields[2].split(",")),
            master_id="" if fields[3] == "-" else fields[3],
            link=fields[7],
            slots=tuple(slots),
        )


class RedisClusterNodes(_Topology):
    """A Redis Cluster on 127.0.0.1: ``masters`` masters with
    ``replicas_per_master`` replicas each (3 + 3 by default), the 16384
    slots split evenly across the masters.

    ``start()`` returns once every node says ``cluster_state:ok``, every node
    knows every other with the role it was given, and each master has its
    replicas connected and online. ``node_timeout_ms`` is short so that a
    killed master is failed over within seconds.

    ``with RedisClusterNodes(tmp_path) as cluster: RedisCluster(*cluster.seed_addresses[0])``
    """

    _uses_cluster_bus = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 2000,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(directory, start_timeout)
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("a cluster needs a master; replicas cannot be negative")
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        #: Every node, masters first, in the order they were started.
        self.nodes: list[RedisNode] = []

    # -- addresses ----------------------------------------------------------------
    @property
    def seed_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every node still running, to seed a client with."""
        return [node.address for node in self.nodes if node.alive]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...``, the live nodes as seeds."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.seed_addresses)

    def cluster_client(self, **options: Any) -> RedisCluster:
        """A new redis-py RedisCluster seeded with every live node (the caller
        closes it)."""
        seeds = [
            SeedNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in self.seed_addresses
        ]
        return RedisCluster(startup_nodes=seeds, **options)

    # -- roles --------------------------------------------------------------------
    def masters(self) -> list[RedisNode]:
        """The running masters, as of the last start, wait or refresh_roles()."""
        return [node for node in self.nodes if node.role == "master" and node.alive]

    def replicas(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.role == "replica" and node.alive]

    def replicas_of(self, master: RedisNode) -> list[RedisNode]:
        return [node for node in self.nodes if node.master_id == master.node_id]

    def node_by_id(self, node_id: str) -> RedisNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def refresh_roles(self) -> None:
        """Bring role, master_id and slots of every node up to date with what
        a running node says (CLUSTER NODES)."""
        views = self._views_from_any()
        for node in self.nodes:
            view = views.get(node.node_id)
            if view is None:
                continue
            node.role = "master" if view.is_master else "replica"
            node.master_id = view.master_id
            node.slots = list(view.slots)

    def master_for_slot(self, slot: int) -> RedisNode:
        """The node serving ``slot`` now, as a running node sees it."""
        if not 0 <= slot < CLUSTER_SLOTS:
            raise ValueError(f"slot {slot} out of 0-{CLUSTER_SLOTS - 1}")
        for view in self._views_from_any().values():
            serves = any(first <= slot <= last for first, last in view.slots)
            if serves and view.is_master and "fail" not in view.flags:
                return self.node_by_id(view.node_id)
        raise TopologyError(f"no master serves slot {slot}")

    def master_for_key(self, key: str | bytes) -> RedisNode:
        return self.master_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    # -- start --------------------------------------------------------------------
    def start(self) -> Self:
        self._start(self._form)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def _node_config(self, node: RedisNode) -> list[str]:
        return [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.node_timeout_ms}",
            "appendonly no",
            'save ""',
        ]

    def _form(self, deadline: float) -> None:
        count = self.master_count
        for i in range(count):
            self.nodes.append(self._spawn(f"master{i}", "master", self._node_config))
        for i in range(count * self.replicas_per_master):
            self.nodes.append(self._spawn(f"replica{i}", "replica", self._node_config))
        self._await_up(self.nodes, deadline)
        masters = self.nodes[:count]
        replicas = self.nodes[count:]

        for node in self.nodes:
            node.node_id = str(node.ask("CLUSTER", "MYID"))
        for i, master in enumerate(masters):
            first, end = i * CLUSTER_SLOTS // count, (i + 1) * CLUSTER_SLOTS // count
            for batch in range(first, end, ADDSLOTS_BATCH):
                master.ask("CLUSTER", "ADDSLOTS", *range(batch, min(batch + ADDSLOTS_BATCH, end)))
            master.slots = [(first, end - 1)]
            # Distinct config epochs up front, as redis-cli does: otherwise the
            # masters start on the same epoch and settle it one by one.
            master.ask("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for node in self.nodes[1:]:
            node.ask("CLUSTER", "MEET", HOST, self.nodes[0].port)
        self._wait("every node to know every other", self._check_acquainted, deadline)

        for i, replica in enumerate(replicas):
            master = masters[i // self.replicas_per_master]
            replica.ask("CLUSTER", "REPLICATE", master.node_id)
            replica.master_id = master.node_id
        self._wait("the cluster to be ok and replicated", self._check_ready, deadline)

    def _views(self, node: RedisNode) -> dict[str, _View]:
        text = str(node.ask("CLUSTER", "NODES"))
        views = (_View.parse(line) for line in text.splitlines() if line.strip())
        return {view.node_id: view for view in views}

    def _views_from_any(self) -> dict[str, _View]:
        for node in self._live(self.nodes):
            with contextlib.suppress(_NotYet):
                return self._views(node)
        raise TopologyError("no cluster node answers CLUSTER NODES")

    def _check_acquainted(self) -> None:
        ids = {node.node_id for node in self.nodes}
        for node in self.nodes:
            views = self._views(node)
            known = {
                view.node_id
                for view in views.values()
                if not view.flags & {"handshake", "noaddr"} and view.link == "connected"
            }
            if known != ids:
                raise _NotYet(f"{node} knows {len(known & ids)} of {len(ids)} nodes", node)

    def _check_cluster_ok(self, node: RedisNode) -> None:
        info = _table(str(node.ask("CLUSTER", "INFO")))
        if info.get("cluster_state") != "ok":
            raise _NotYet(f"{node} says cluster_state:{info.get('cluster_state')}", node)
        if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
            raise _NotYet(f"{node} says cluster_slots_ok:{info.get('cluster_slots_ok')}", node)

    def _check_ready(self) -> None:
        for node in self.nodes:
            self._check_cluster_ok(node)
            views = self._views(node)
            for other in self.nodes:
                view = views.get(other.node_id)
                expected = "master" if other.role == "master" else "slave"
                if view is None or expected not in view.flags or view.master_id != other.master_id:
                    raise _NotYet(f"{node} does not see {other} as {expected} yet", node)
        for master in self.masters():
            info = master.ask("INFO", "replication")
            want = len(self.replicas_of(master))
            online = [
                info[f"slave{i}"]
                for i in range(int(info.get("connected_slaves", 0)))
                if isinstance(info.get(f"slave{i}"), dict)
                and info[f"slave{i}"].get("state") == "online"
            ]
            if len(online) < want:
                raise _NotYet(f"{master} has {len(online)} of {want} replicas online", master)
        for replica in self.replicas():
            info = replica.ask("INFO", "replication")
            if info.get("master_link_status") != "up":
                raise _NotYet(f"{replica}: master_link_status:{info.get('master_link_status')}")

    # -- failover -----------------------------------------------------------------
    def wait_for_failover(self, old_master: RedisNode, timeout: float = 30.0) -> RedisNode:
        """Wait until a replica of ``old_master`` (killed before) serves all of
        its slots, every running node agrees and says ``cluster_state:ok``, and
        the old master is flagged as failed; return the new master.

        No CLUSTER FAILOVER is sent: the replicas fail their master over by
        themselves once it is unreachable for ``node_timeout_ms``."""
        if old_master.alive:
            raise ValueError(f"{old_master} is still running: kill() it first")
        old_slots = list(old_master.slots)
        if old_master.role != "master" or not old_slots:
            raise ValueError(f"{old_master} served no slots")
        heirs = {node.node_id for node in self.replicas_of(old_master)}
        owners: set[str] = set()

        def check() -> None:
            owners.clear()
            for node in self._live(self.nodes):
                self._check_cluster_ok(node)
                views = self._views(node)
                old = views.get(old_master.node_id)
                if old is None or "fail" not in old.flags:
                    raise _NotYet(f"{node} does not flag {old_master} as failed yet", node)
                for first, last in old_slots:
                    for slot in (first, last):
                        owner = [
                            v.node_id
                            for v in views.values()
                            if v.is_master and any(a <= slot <= b for a, b in v.slots)
                        ]
                        if len(owner) != 1 or owner[0] not in heirs:
                            raise _NotYet(f"{node} has slot {slot} served by {owner}", node)
                        owners.add(owner[0])
            if len(owners) != 1:
                raise _NotYet(f"the nodes disagree on the new master: {sorted(owners)}")

        self._wait(f"a replica of {old_master} to take over", check, time.monotonic() + timeout)
        self.refresh_roles()
        return self.node_by_id(owners.pop())


# -- Sentinel ----------------------------------------------------------------------------
class SentinelSet(_Topology):
    """A master and a replica (``replicaof``) watched by ``sentinels``
    Sentinels (3 by default, quorum 2) under the name ``service``, with
    short timeouts so that a killed master is failed over within seconds.

    ``start()`` returns once the replica's link is up and every Sentinel
    reports the master, sees the replica with its link up and sees the other
    Sentinels.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        service: str = "sandboxq",
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(directory, start_timeout)
        self.service = service
        self.sentinel_count = sentinels
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        #: The data nodes: the first master, then the replica.
        self.servers: list[RedisNode] = []
        self.sentinels: list[RedisNode] = []

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [node.address for node in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/<service>``"""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service}"

    def node_at(self, address: tuple[str, int]) -> RedisNode:
        for node in self.servers:
            if node.address == tuple(address):
                return node
        raise KeyError(address)

    def master_address(self) -> tuple[str, int]:
        """The master as the first Sentinel that answers reports it."""
        for sentinel in self._live(self.sentinels):
            with contextlib.suppress(_NotYet):
                reply = sentinel.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                if reply:
                    return (str(reply[0]), int(reply[1]))
        raise TopologyError(f"no Sentinel reports a master for {self.service!r}")

    def kill_master(self) -> tuple[str, int]:
        """SIGKILL the current master; return its address."""
        address = self.master_address()
        self.kill(self.node_at(address))
        return address

    def wait_for_new_master(
        self, old_address: tuple[str, int], timeout: float = 30.0
    ) -> tuple[str, int]:
        """Wait until every running Sentinel reports the same master, not at
        ``old_address``, and that server answers ROLE as a master; return its
        address."""
        old = (str(old_address[0]), int(old_address[1]))
        found: list[tuple[str, int]] = []

        def check() -> None:
            found.clear()
            reported = set()
            for sentinel in self._live(self.sentinels):
                reply = sentinel.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                address = (str(reply[0]), int(reply[1])) if reply else None
                if address is None or address == old:
                    raise _NotYet(f"{sentinel} still reports {address}", sentinel)
                reported.add(address)
            if len(reported) != 1:
                raise _NotYet(f"the Sentinels disagree: {sorted(reported)}")
            address = reported.pop()
            node = self.node_at(address)
            role = node.ask("ROLE")
            if str(role[0]) != "master":
                raise _NotYet(f"{node} answers ROLE {role[0]}", node)
            found.append(address)

        self._wait(f"a new master of {self.service!r}", check, time.monotonic() + timeout)
        for node in self.servers:
            node.role = "master" if node.address == found[0] else "replica"
        return found[0]

    # -- start --------------------------------------------------------------------
    def start(self) -> Self:
        self._start(self._form)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def _form(self, deadline: float) -> None:
        data = ["appendonly no", 'save ""']
        master = self._spawn("master", "master", lambda node: data)
        self.servers.append(master)
        self._await_up([master], deadline)
        replica = self._spawn(
            "replica", "replica", lambda node: [*data, f"replicaof {HOST} {master.port}"]
        )
        self.servers.append(replica)
        self._await_up([replica], deadline)
        # The replica online first: a Sentinel's first INFO of the master then
        # lists it already, instead of 10 s later at the next one.
        self._wait("the replica to sync", self._check_replicated, deadline)

        for i in range(self.sentinel_count):
            self.sentinels.append(self._spawn(f"sentinel{i}", "sentinel", self._sentinel_config))
        self._await_up(self.sentinels, deadline)
        self._wait("the Sentinels to see it all", self._check_sentinels, deadline)

    def _sentinel_config(self, node: RedisNode) -> list[str]:
        master = self.servers[0]
        name = self.service
        return [
            f"sentinel monitor {name} {master.host} {master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]

    def _check_replicated(self) -> None:
        master, replica = self.servers
        info = replica.ask("INFO", "replication")
        if info.get("master_link_status") != "up":
            raise _NotYet(
                f"{replica}: master_link_status:{info.get('master_link_status')}", replica
            )
        info = master.ask("INFO", "replication")
        slave = info.get("slave0")
        if not isinstance(slave, dict) or slave.get("state") != "online":
            raise _NotYet(f"{master} has no replica online: {slave}", master)

    def _check_sentinels(self) -> None:
        master, replica = self.servers
        others = self.sentinel_count - 1
        for sentinel in self.sentinels:
            state = _pairs(sentinel.ask("SENTINEL", "MASTER", self.service))
            if state.get("flags") != "master" or int(state.get("port", 0)) != master.port:
                raise _NotYet(f"{sentinel} reports master {state}", sentinel)
            if int(state.get("num-other-sentinels", 0)) != others:
                raise _NotYet(
                    f"{sentinel} sees {state.get('num-other-sentinels')} of {others} Sentinels",
                    sentinel,
                )
            replicas = [_pairs(flat) for flat in sentinel.ask("SENTINEL", "REPLICAS", self.service)]
            if not any(
                int(seen.get("port", 0)) == replica.port
                and seen.get("flags") == "slave"
                and seen.get("master-link-status") == "ok"
                for seen in replicas
            ):
                raise _NotYet(f"{sentinel} sees replicas {replicas}", sentinel)
            peers = [_pairs(flat) for flat in sentinel.ask("SENTINEL", "SENTINELS", self.service)]
            if sum(peer.get("flags") == "sentinel" for peer in peers) != others:
                raise _NotYet(f"{sentinel} sees Sentinels {peers}", sentinel)
