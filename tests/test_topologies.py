"""The Redis topologies of tests/topologies.py, checked with plain redis-py
clients: before the Cluster and Sentinel support is tested on them, they
must be what they claim, a cluster that covers every slot with replicated
masters and fails a killed master over, and Sentinels that do the same."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from tests.topologies import (
    CLUSTER_SLOTS,
    RedisClusterNodes,
    RedisNode,
    SentinelSet,
    TopologyError,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.integration]


@pytest.fixture
def cluster_client(cluster: RedisClusterNodes) -> Iterator[RedisCluster]:
    client = RedisCluster(host=cluster.nodes[0].host, port=cluster.nodes[0].port)
    yield client
    client.close()


def key_on(cluster: RedisClusterNodes, master: RedisNode, prefix: str) -> str:
    """A key whose slot ``master`` serves."""
    for i in range(10_000):
        key = f"{prefix}-{i}"
        if cluster.master_for_key(key) is master:
            return key
    raise AssertionError(f"no key of 10000 lands on {master}")


def write_replicated(node: RedisNode, key: str, value: str) -> None:
    """SET on ``node`` directly, then WAIT on the same connection until its
    replica acknowledged the write: the write survives a kill of ``node``."""
    with node.client() as client, client.pipeline(transaction=False) as pipe:
        pipe.set(key, value)
        pipe.execute_command("WAIT", 1, 10_000)
        _ok, acked = pipe.execute()
    assert acked >= 1, f"no replica of {node} acknowledged the write of {key}"


def discover_master(sentinel: Sentinel, service: str) -> tuple[str, int]:
    """The master of ``service`` as redis-py's Sentinel client finds it."""
    host, port = sentinel.discover_master(service)  # type: ignore[no-untyped-call]
    return (str(host), int(port))


# -- Redis Cluster ---------------------------------------------------------------------
def test_cluster_covers_every_slot_with_three_replicated_masters(
    cluster: RedisClusterNodes, cluster_client: RedisCluster
) -> None:
    ports = [node.port for node in cluster.nodes]
    assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    assert len(cluster.masters()) == 3
    assert len(cluster.replicas()) == 3

    covered: set[int] = set()
    for master in cluster.masters():
        (replica,) = cluster.replicas_of(master)
        assert replica.role == "replica"
        for first, last in master.slots:
            covered.update(range(first, last + 1))
            assert cluster.master_for_slot(first) is master
            assert cluster.master_for_slot(last) is master
        with master.client(decode_responses=True) as client:
            replication = client.info("replication")
        assert replication["role"] == "master"
        assert replication["connected_slaves"] == 1
        assert replication["slave0"]["port"] == replica.port
    assert covered == set(range(CLUSTER_SLOTS))

    # What a client sees: every slot served by a master and a replica.
    info = cluster_client.cluster_info(target_nodes=RedisCluster.ALL_NODES)
    for node_info in cast(dict[str, dict[str, Any]], info).values():
        assert node_info["cluster_state"] == "ok"
        assert int(node_info["cluster_slots_assigned"]) == CLUSTER_SLOTS
        assert int(node_info["cluster_known_nodes"]) == 6
    assert len(cluster_client.get_primaries()) == 3  # type: ignore[no-untyped-call]
    assert len(cluster_client.get_replicas()) == 3  # type: ignore[no-untyped-call]
    slots = cluster_client.nodes_manager.slots_cache
    assert sorted(slots) == list(range(CLUSTER_SLOTS))
    assert all(len(serving) == 2 for serving in slots.values())


def test_cluster_write_on_each_master_is_readable(
    cluster: RedisClusterNodes, cluster_client: RedisCluster
) -> None:
    token = uuid.uuid4().hex
    for master in cluster.masters():
        key = key_on(cluster, master, f"each-{token}")
        cluster_client.set(key, master.name)
        assert cluster_client.get(key) == master.name.encode()
        # It landed on that master, not just somewhere the client can read.
        with master.client() as direct:
            assert direct.get(key) == master.name.encode()


def test_cluster_killed_master_is_replaced_by_its_replica(
    doomed_cluster: RedisClusterNodes,
) -> None:
    cluster = doomed_cluster
    victim = cluster.masters()[0]
    (heir,) = cluster.replicas_of(victim)
    victim_slots = list(victim.slots)
    survivor = cluster.masters()[1]
    doomed_key = key_on(cluster, victim, "doomed")
    other_key = key_on(cluster, survivor, "other")
    write_replicated(victim, doomed_key, "before")
    write_replicated(survivor, other_key, "elsewhere")

    client = RedisCluster(host=victim.host, port=victim.port)
    try:
        assert client.get(doomed_key) == b"before"
        cluster.kill(victim)
        assert not victim.alive
        promoted = cluster.wait_for_failover(victim)

        assert promoted is heir
        assert heir.role == "master"
        assert heir.slots == victim_slots
        assert cluster.master_for_key(doomed_key) is heir
        assert len(cluster.masters()) == 3
        assert victim.address not in cluster.seed_addresses

        # A client that knew the old master: after refreshing its slot map,
        # it reads the write from before and writes to the promoted replica.
        client.nodes_manager.initialize()
        assert client.get(doomed_key) == b"before"
        assert client.get(other_key) == b"elsewhere"
        client.set(doomed_key, "after")
        with heir.client() as direct:
            assert direct.get(doomed_key) == b"after"
    finally:
        client.close()

    with cluster.cluster_client() as fresh:
        assert fresh.get(doomed_key) == b"after"


def test_failed_start_leaves_no_process_and_shows_the_log(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A start that times out halfway (here: at once) still ends every
    redis-server it started, and the error carries a node's log."""
    topology = RedisClusterNodes(tmp_path_factory.mktemp("no-time"), start_timeout=0.0)
    with pytest.raises(TopologyError) as failure:
        topology.start()
    assert topology.nodes, "the start did not get as far as starting nodes"
    for node in topology.nodes:
        assert node.process is not None
        assert node.process.returncode is not None, f"{node} left running"
    assert "redis.log ---" in str(failure.value) or "stdout.log ---" in str(failure.value)


# -- Sentinel ----------------------------------------------------------------------------
def test_sentinel_promotes_the_replica_of_a_killed_master(sentinel_set: SentinelSet) -> None:
    master, replica = sentinel_set.servers
    hosts = ",".join(f"127.0.0.1:{port}" for _host, port in sentinel_set.sentinel_addresses)
    assert sentinel_set.url == f"redis+sentinel://{hosts}/{sentinel_set.service}"
    assert len(sentinel_set.sentinel_addresses) == 3
    assert sentinel_set.master_address() == master.address

    sentinel = Sentinel(sentinel_set.sentinel_addresses, socket_timeout=2.0)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(sentinel_set.service, socket_timeout=2.0)  # type: ignore[no-untyped-call]
    try:
        assert discover_master(sentinel, sentinel_set.service) == master.address
        with client.pipeline(transaction=False) as pipe:
            pipe.set("before", "1")
            pipe.execute_command("WAIT", 1, 10_000)
            _ok, acked = pipe.execute()
        assert acked == 1

        old = sentinel_set.kill_master()
        assert old == master.address
        new = sentinel_set.wait_for_new_master(old)
        assert new == replica.address
        assert sentinel_set.master_address() == new
        assert replica.role == "master"

        # The same client finds the new master through the Sentinels.
        assert client.set("after", "2")
        assert client.get("before") == b"1"
        assert discover_master(sentinel, sentinel_set.service) == new
    finally:
        client.close()
        for conn in sentinel.sentinels:
            conn.close()
    with replica.client() as direct:
        assert direct.get("after") == b"2"
        assert direct.execute_command("ROLE")[0] == b"master"


def test_sentinel_stop_ends_every_process(tmp_path_factory: pytest.TempPathFactory) -> None:
    with SentinelSet(tmp_path_factory.mktemp("sentinel-stop")) as topology:
        nodes = [*topology.servers, *topology.sentinels]
        assert len(nodes) == 5
        assert all(node.alive for node in nodes)
    for node in nodes:
        assert not node.alive
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(node.address, timeout=2.0).close()
