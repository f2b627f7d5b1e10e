"""Redis URLs of the three kinds: one server, a cluster, a Sentinel-managed
master. Parsing needs no server; a bad URL gets one line naming the problem,
and never shows the password."""

from __future__ import annotations

import pytest

from sandboxq import Queue, addresses
from tests.worker_harness import run_sandboxq


def test_a_cluster_url_lists_its_seed_nodes_with_credentials() -> None:
    found = addresses.parse("redis+cluster://app:s3cret@10.0.0.1:7000,node-b,[::1]:7002")
    assert found.kind == "cluster"
    assert found.nodes == (("10.0.0.1", 7000), ("node-b", 6379), ("::1", 7002))
    assert (found.username, found.password, found.tls) == ("app", "s3cret", False)
    assert addresses.parse("rediss+cluster://h:7000/0").tls


def test_a_sentinel_url_names_the_service_and_database() -> None:
    found = addresses.parse(
        "rediss+sentinel://:pw@s1,s2:26380/orders/2?sentinel_password=sp&sentinel_username=su"
    )
    assert found.kind == "sentinel"
    assert found.nodes == (("s1", 26379), ("s2", 26380))
    assert (found.service, found.db, found.tls) == ("orders", 2, True)
    assert (found.username, found.password) == (None, "pw")
    assert (found.sentinel_username, found.sentinel_password) == ("su", "sp")
    assert addresses.parse("redis+sentinel://s1/orders").db == 0


def test_a_tls_url_takes_redis_pys_tls_settings() -> None:
    found = addresses.parse(
        "rediss+cluster://h:7000?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=no"
    )
    assert found.tls_options == {
        "ssl_cert_reqs": "none",
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_check_hostname": False,
    }
    with pytest.raises(ValueError, match="unknown option ssl_cert_reqs"):
        addresses.parse("redis+cluster://h:7000?ssl_cert_reqs=none")  # not a TLS URL
    with pytest.raises(ValueError, match="bad ssl_check_hostname 'maybe'"):
        addresses.parse("rediss+sentinel://s1/orders?ssl_check_hostname=maybe")


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock?db=1"]
)
def test_a_single_server_url_is_left_to_redis_py(url: str) -> None:
    assert addresses.parse(url).kind == "server"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "it is empty"),
        ("localhost:6379", "expected SCHEME://"),
        ("redis+clustr://h:1", "unknown scheme 'redis+clustr'"),
        ("redis+cluster://h1,,h2", "a host is missing"),
        ("redis+cluster://h:0", "bad port '0'"),
        ("redis+cluster://h:port", "bad port 'port'"),
        ("redis+cluster://::1:7000", "write an IPv6 address as [ADDRESS]:PORT"),
        ("redis+cluster://h:7000/3", "Redis Cluster has only database 0"),
        ("redis+cluster://h:7000?sentinel_password=x", "unknown option sentinel_password"),
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel://s1/orders/x", "bad database 'x'"),
        ("redis+sentinel://s1/orders/1/2", "too many path parts"),
        ("redis+sentinel://s1/orders?timeout=3", "unknown option timeout"),
    ],
)
def test_a_bad_url_gets_one_line_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="bad Redis URL") as caught:
        addresses.parse(url)
    message = str(caught.value)
    assert problem in message
    assert "\n" not in message


def test_passwords_never_show_in_errors() -> None:
    with pytest.raises(ValueError) as caught:
        addresses.parse("redis+sentinel://user:hunter2@s1/orders/x?sentinel_password=swordfish")
    assert "hunter2" not in str(caught.value)
    assert "swordfish" not in str(caught.value)
    assert "user:***@" in str(caught.value)
    with pytest.raises(ValueError) as bad_server:
        Queue("q", url="redis://:hunter2@localhost:notaport/0")
    assert "hunter2" not in str(bad_server.value)


BAD_URL = "redis+cluster://127.0.0.1:7000,:7001"


def test_the_worker_stops_on_a_bad_url_with_a_boot_error() -> None:
    """Exit code 3 (a boot error: restarting will not fix it), one clear
    line, and no traceback."""
    run = run_sandboxq("worker", "tests.jobs", "--url", BAD_URL)
    assert run.returncode == 3, run.stderr
    assert "bad host ':7001': the host name is empty" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_queue_never_shows_its_password() -> None:
    queue = Queue("q", url="redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(queue)
    with pytest.raises(Exception) as caught:
        queue.add("ok")
    assert "hunter2" not in str(caught.value)
    assert "redis://:***@127.0.0.1:1/0" in str(caught.value)
