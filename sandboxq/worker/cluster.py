"""The worker's Redis Cluster links: one round and one wait, spread over shards.

A queue's keys share one hash tag, so each of its transitions is one script
on the shard that owns the tag's slot. A worker serving queues on several
shards still sends one round and one wait at a time, as on a single server:

- :class:`ClusterLink` takes a round's commands, sends each to the master of
  its key's slot (one :class:`RedisLink` per master, all driven by the
  parent's one ``select``), and hands the replies back in the order the
  commands were given. ``SCRIPT LOAD`` goes to every master; the keyless
  checks (``TIME``, ``INFO``, ``CONFIG GET``) to the master of the first
  queue the worker serves.
- :class:`ClusterWaiter` splits the wait, a ``BZPOPMIN`` over every queue's
  marker, into one ``BZPOPMIN`` per marker, each on a connection of its own
  (a blocked connection serves nothing else, and the markers live in
  different slots). The first marker's reply answers the wait; the others
  stay blocked, and a later wait takes over their replies.

The slot map (``CLUSTER SLOTS``) is read without blocking when the round link
opens, from the URL's seed nodes or any node the last map named. A node that
fails, or a MOVED/ASK reply (a failover or a resharding moved the slot),
marks the map stale: the next round reads it again, and the replies lost on
the way are handled like any lost reply (the broker package).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any

from redis.crc import key_slot

from sandboxq.worker.link import Endpoint, LinkError, RedisLink

Address = tuple[str, int]

#: Commands without a key, and where they go.
_TO_EVERY_MASTER = {b"SCRIPT", "SCRIPT"}
_KEYLESS = {"TIME", "INFO", "CONFIG", b"TIME", b"INFO", b"CONFIG"}


def _key_of(command: tuple[Any, ...]) -> Any:
    """The key a command touches (all its keys share its slot), or None."""
    name = command[0]
    if name in ("EVALSHA", b"EVALSHA"):
        return command[3] if int(command[2]) > 0 else None
    if name in _KEYLESS or name in _TO_EVERY_MASTER:
        return None
    return command[1]


def _moved(reply: Any) -> bool:
    """A MOVED or ASK error: the slot is served elsewhere now."""
    return isinstance(reply, Exception) and str(reply).startswith(("MOVED ", "ASK "))


class ClusterTopology:
    """Which master serves which slot, shared by a worker's round link and
    its waiter. ``stale`` asks for the map to be read again."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.seeds: list[Address] = list(endpoint.cluster_seeds)
        self._owner: list[Address | None] = []
        self.stale = True
        self._turn = 0

    @property
    def known(self) -> bool:
        return bool(self._owner)

    def master_of(self, key: Any) -> Address:
        owner = self._owner[key_slot(key if isinstance(key, bytes) else str(key).encode())]
        if owner is None:
            self.stale = True
            raise LinkError(f"no master serves the slot of {key!r} (the cluster is incomplete)")
        return owner

    def masters(self) -> list[Address]:
        return sorted({owner for owner in self._owner if owner is not None})

    def next_seed(self) -> Address:
        """The node to ask for the map next: the URL's seeds and the masters
        the last map named, in turn, so a dead one costs one try."""
        candidates = list(dict.fromkeys([*self.seeds, *self.masters()]))
        seed = candidates[self._turn % len(candidates)]
        self._turn += 1
        return seed

    def update(self, reply: Any) -> None:
        """Take a CLUSTER SLOTS reply: [start, end, [host, port, ...], replicas...]."""
        owner: list[Address | None] = [None] * 16384
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            address = (host or self.seeds[0][0], int(master[1]))
            owner[start : end + 1] = [address] * (end - start + 1)
        self._owner = owner
        self.stale = False

    def node_endpoint(self, address: Address) -> Endpoint:
        return dataclasses.replace(
            self.endpoint, host=address[0], port=address[1], cluster_seeds=()
        )


class ClusterLink:
    """The round connection of a worker on a Redis Cluster: RedisLink's
    interface, over one link per master (see the module's docstring)."""

    def __init__(self, topology: ClusterTopology, home_key: str) -> None:
        self.topology = topology
        #: A key of the first queue: its master answers the keyless checks.
        self.home_key = home_key
        self.on_close: Any = None
        self._nodes: dict[Address, RedisLink] = {}
        #: While the slot map is being read: the link asking, and the
        #: commands held until the answer.
        self._asking: RedisLink | None = None
        self._held: list[tuple[Any, ...]] = []
        #: For each command sent, in order: the masters whose replies make it
        #: up (one, or every master for SCRIPT LOAD).
        self._order: deque[list[Address]] = deque()
        self._replies: dict[Address, deque[Any]] = {}
        self._open = False

    # -- RedisLink's interface ------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._open

    def sockets(self) -> list[tuple[int, bool]]:
        links = [*self._nodes.values(), *([self._asking] if self._asking else [])]
        return [(link.fileno(), link.wants_write()) for link in links if link.is_open]

    def wants_write(self) -> bool:
        return any(write for _fd, write in self.sockets())

    def open(self) -> None:
        self.close()
        self._open = True
        if self.topology.stale or not self.topology.known:
            seed = self.topology.next_seed()
            self._asking = self._new_link(seed)
            self._asking.send([("CLUSTER", "SLOTS")])

    def close(self) -> None:
        for link in [*self._nodes.values(), *([self._asking] if self._asking else [])]:
            link.close()
        self._nodes.clear()
        self._asking = None
        self._held.clear()
        self._order.clear()
        self._replies.clear()
        self._open = False

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        if not self._open or (self.topology.stale and self._asking is None):
            self.open()
        if self._asking is not None:
            self._held += commands
            return
        per_node: dict[Address, list[tuple[Any, ...]]] = {}
        for command in commands:
            targets = self._targets(command)
            self._order.append(targets)
            for target in targets:
                per_node.setdefault(target, []).append(command)
        for target, batch in per_node.items():
            try:
                self._node(target).send(batch)
            except LinkError as exc:
                self._node_failed(target, exc)

    def on_writable(self, fd: int | None = None) -> None:
        for address, link in self._ready(fd):
            try:
                link.on_writable()
            except LinkError as exc:
                self._node_failed(address, exc)

    def read(self, fd: int | None = None) -> list[Any]:
        if self._asking is not None and (fd is None or fd == self._asking.fileno()):
            self._read_map()
            return []
        for address, link in self._ready(fd):
            if address == self._ASKING:
                continue
            try:
                self._replies.setdefault(address, deque()).extend(link.read())
            except LinkError as exc:
                self._replies.setdefault(address, deque()).extend(exc.replies)
                self._node_failed(address, exc)
        return self._in_order()

    # -- inside --------------------------------------------------------------------
    def _new_link(self, address: Address) -> RedisLink:
        link = RedisLink(self.topology.node_endpoint(address))
        link.on_close = self.on_close
        link.open()
        return link

    def _node(self, address: Address) -> RedisLink:
        link = self._nodes.get(address)
        if link is None or not link.is_open:
            link = self._nodes[address] = self._new_link(address)
        return link

    #: Stands for the link reading the slot map in :meth:`_ready`.
    _ASKING: Address = ("", 0)

    def _ready(self, fd: int | None) -> list[tuple[Address, RedisLink]]:
        """The open links whose socket is ``fd`` (all of them for None)."""
        links = [*self._nodes.items(), *([(self._ASKING, self._asking)] if self._asking else [])]
        return [(a, link) for a, link in links if link.is_open and fd in (None, link.fileno())]

    def _node_failed(self, address: Address, exc: LinkError) -> Any:
        """A node's connection failed: the round fails (the replies that came
        in order are kept), and the next round reads the slot map again, in
        case a replica took over the node's slots."""
        self.topology.stale = True
        where = "the node giving the slot map" if address == self._ASKING else address
        self._fail(f"{where}: {exc}")

    def _targets(self, command: tuple[Any, ...]) -> list[Address]:
        if command[0] in _TO_EVERY_MASTER:
            return self.topology.masters()
        key = _key_of(command)
        return [self.topology.master_of(self.home_key if key is None else key)]

    def _read_map(self) -> None:
        assert self._asking is not None
        try:
            replies = self._asking.read()
        except LinkError as exc:
            self._fail(f"reading the cluster's slots: {exc}")
        if not replies:
            return
        if isinstance(replies[0], Exception):
            self._fail(f"CLUSTER SLOTS failed: {replies[0]}")
        self.topology.update(replies[0])
        asking, held = self._asking, self._held
        self._asking, self._held = None, []
        asking.close()
        self.send(held)

    def _in_order(self) -> list[Any]:
        """The replies whose turn came, in the order of their commands. One
        that says the slot moved marks the map stale."""
        replies = []
        while self._order:
            targets = self._order[0]
            if not all(self._replies.get(t) for t in targets):
                break
            self._order.popleft()
            parts = [self._replies[t].popleft() for t in targets]
            reply = next((p for p in parts if isinstance(p, Exception)), parts[0])
            if _moved(reply):
                self.topology.stale = True
            replies.append(reply)
        return replies

    def _fail(self, message: str) -> Any:
        replies = self._in_order()
        self.close()
        raise LinkError(f"Redis Cluster node {message}", replies)


class ClusterWaiter:
    """The wait of a worker on a Redis Cluster: one BZPOPMIN per marker,
    each on its own connection (see the module's docstring)."""

    def __init__(self, topology: ClusterTopology) -> None:
        self.topology = topology
        self.on_close: Any = None
        #: Per marker: its connection, and when its BZPOPMIN times out
        #: (monotonic; 0 when no reply is outstanding).
        self._links: dict[Any, RedisLink] = {}
        self._until: dict[Any, float] = {}
        self._open = False
        self._answered = False

    @property
    def is_open(self) -> bool:
        return self._open

    def sockets(self) -> list[tuple[int, bool]]:
        return [
            (link.fileno(), link.wants_write()) for link in self._links.values() if link.is_open
        ]

    def wants_write(self) -> bool:
        return any(write for _fd, write in self.sockets())

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._until.clear()
        self._open = False

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        """Arm the wait: ``[("BZPOPMIN", *markers, timeout)]``. A marker
        whose earlier BZPOPMIN is still blocked keeps it, unless it would
        outlast this wait's timeout."""
        if not self.topology.known:
            raise LinkError("the cluster's slots are not known yet")
        (command,) = commands
        *markers, timeout = command[1:]
        until = time.monotonic() + float(timeout)
        self._answered = False
        self._open = True
        for marker in markers:
            link = self._links.get(marker)
            moved = link is not None and (
                (link.endpoint.host, link.endpoint.port) != self.topology.master_of(marker)
            )
            if link is not None and (moved or self._until.get(marker, 0) > until + 0.05):
                link.close()
                link = None
            if link is None or not link.is_open:
                address = self.topology.master_of(marker)
                link = self._links[marker] = RedisLink(self.topology.node_endpoint(address))
                link.on_close = self.on_close
                self._until[marker] = 0.0
            if self._until[marker] == 0.0:
                try:
                    if not link.is_open:
                        link.open()
                    link.send([("BZPOPMIN", marker, timeout)])
                except LinkError as exc:
                    self._failed(exc)
                self._until[marker] = until

    def on_writable(self, fd: int | None = None) -> None:
        for link in self._links.values():
            if link.is_open and fd in (None, link.fileno()):
                try:
                    link.on_writable()
                except LinkError as exc:
                    self._failed(exc)

    def read(self, fd: int | None = None) -> list[Any]:
        """``[reply]`` once the wait answered: the first marker's reply, a
        marker popped or None for a timeout. A timeout answers too, so no
        marker is left unwatched while the others still wait; the worker
        then looks for work and waits again."""
        for marker, link in list(self._links.items()):
            if not link.is_open or (fd is not None and link.fileno() != fd):
                continue
            try:
                replies = link.read()
            except LinkError as exc:
                self._failed(exc)
            if replies:  # one BZPOPMIN per link: at most one reply
                self._until[marker] = 0.0
                if _moved(replies[0]):
                    self.topology.stale = True
                return self._answer(replies[0])
        return []

    def _failed(self, exc: LinkError) -> Any:
        """A connection failed: the wait answers with the failure, and the
        slot map is read again (its node may have failed over)."""
        self.topology.stale = True
        self.close()
        raise LinkError(f"Redis Cluster node: {exc}") from exc

    def _answer(self, reply: Any) -> list[Any]:
        if self._answered:
            return []
        self._answered = True
        return [reply]
