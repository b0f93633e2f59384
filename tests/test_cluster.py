"""agentcoord on a Redis Cluster: what only a cluster has (several primaries, several agentcoord
servers sharing one cluster) and the start failures of a REDIS_URL that cannot work.

The service suites themselves run on the cluster too (conftest: `every_backend`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import uvloop
from agentcoord import AgentcoordError, AsyncClient
from agentcoord.v1 import admin_pb2
from agentcoord_server.errors import Unavailable
from agentcoord_server.interceptors import _translate
from agentcoord_server.store.scripts import _registered
from redis.asyncio import Connection

from .conftest import server_settings
from .redis_topologies import LocalCluster, RedisNodes, free_ports
from .support import ServerThread


@pytest.fixture(scope="module")
def cluster_url(redis_cluster: LocalCluster) -> str:
    return redis_cluster.url


@pytest.fixture(scope="module")
def two_servers(cluster_url: str):  # type: ignore[no-untyped-def]
    first = ServerThread(server_settings(cluster_url)).start()
    second = ServerThread(server_settings(cluster_url)).start()
    yield first, second
    first.stop()
    second.stop()


async def test_server_stats_say_cluster_and_name_every_primary(two_servers, redis_cluster, namespace):
    first, _ = two_servers
    async with AsyncClient(first.address, token=first.issue_token("s", "STEWARD", namespace)) as c:
        await c.memory.stash("k", 1)
        stats = await c.admin.get_server_stats()

    assert stats.redis_mode == admin_pb2.REDIS_MODE_CLUSTER
    primaries = sorted(f"127.0.0.1:{p}" for p in redis_cluster.primary_ports())
    assert list(stats.redis_nodes) == primaries and len(primaries) == 3
    assert stats.namespace_stats.memory_entries == 1  # read on the primary owning the namespace


async def test_two_servers_on_one_cluster_hand_each_task_to_exactly_one_claimant(
    two_servers, namespace
):
    servers = two_servers
    clients = [
        AsyncClient(servers[n % 2].address, token=servers[n % 2].issue_token(f"w{n}", "CONTRIBUTOR", namespace))
        for n in range(16)
    ]
    ids = [f"t{i:03d}" for i in range(100)]
    await asyncio.gather(*(clients[0].tasks.add_task(task_id=i, task_type="job") for i in ids))
    claimed: list[tuple[int, str]] = []

    async def work(n: int) -> None:
        client = clients[n]
        while (task := await client.tasks.claim_task(task_types=["job"])) is not None:
            claimed.append((n % 2, task.task_id))
            await client.tasks.complete_task(
                task_id=task.task_id, fencing_token=task.lease.fencing_token, result={"n": n}
            )

    try:
        await asyncio.gather(*(work(n) for n in range(16)))
        prize = [c.tasks.claim_task(task_types=["prize"]) for c in clients]
        await clients[1].tasks.add_task(task_id="prize", task_type="prize")
        winners = [t for t in await asyncio.gather(*prize) if t is not None]
    finally:
        for client in clients:
            await client.close()

    assert sorted(t for _, t in claimed) == ids  # none claimed twice, none left
    assert {server for server, _ in claimed} == {0, 1}  # both servers handed tasks out
    assert [t.task_id for t in winners] == ["prize"]


async def test_signals_sent_through_one_server_reach_the_other_servers_subscribers_in_order(
    two_servers, namespace
):
    first, second = two_servers
    sender = AsyncClient(first.address, token=first.issue_token("alice", "CONTRIBUTOR", namespace))
    listener = AsyncClient(second.address, token=second.issue_token("bob", "OBSERVER", namespace))
    try:
        anchor = await sender.signals.send_signal("start")
        stream = listener.signals.subscribe(after_id=anchor.id)
        receiving = asyncio.ensure_future(_take(stream, 50))
        sent = [(await sender.signals.send_signal("n", {"i": i})).id for i in range(50)]
        got = [s.id for s in await receiving]
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await sender.close()
        await listener.close()

    assert got == sent


async def _take(stream, count: int):  # type: ignore[no-untyped-def]
    out = []
    async with asyncio.timeout(30):
        async for item in stream:
            out.append(item)
            if len(out) == count:
                return out
    return out


def _serve(redis_url: str, tmp_path) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [
            sys.executable, "-m", "agentcoord_server.cli", "serve",
            "--listen", "127.0.0.1:0",
            "--redis-url", redis_url,
            "--redis-timeout", "2",
            "--data-dir", str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def odd_nodes(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A standalone Redis and a cluster-enabled node that owns no slot, on TCP ports."""
    nodes = RedisNodes(tmp_path_factory.mktemp("odd"))
    standalone, lonely = free_ports(2, bus=True)
    nodes.start(standalone)
    nodes.start(lonely, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    yield standalone, lonely
    nodes.stop()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://127.0.0.1:{free}", "cannot reach any Redis Cluster node"),
        ("redis+cluster://127.0.0.1:{lonely}", "does not cover all 16384 slots"),
        ("redis+cluster://127.0.0.1:{standalone}", "names a standalone Redis, not a cluster node"),
        ("redis://127.0.0.1:{cluster}", "is a Redis Cluster node; use redis+cluster://"),
        ("redis+sentinel://127.0.0.1:{free}", "needs the master name"),
        ("redis+sentinel://127.0.0.1:{free}/mymaster", "no Sentinel of"),
        ("redis+cluster://127.0.0.1", "needs host:port"),
    ],
)
def test_a_redis_url_that_cannot_work_fails_the_start_with_one_line(
    url, says, odd_nodes, redis_cluster, tmp_path
):
    standalone, lonely = odd_nodes
    (free,) = free_ports(1)
    named = url.format(
        free=free, lonely=lonely, standalone=standalone, cluster=redis_cluster.ports[0]
    )

    done = _serve(named, tmp_path)

    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(("agentcoord: ", "Error: ")), done.stderr
    assert says in errors[0]
    assert "Traceback" not in done.stdout + done.stderr


async def test_scripts_are_loaded_on_every_primary_and_reloaded_after_a_script_flush(
    redis_cluster, namespace
):
    primaries = [redis_cluster.nodes.client(p) for p in redis_cluster.primary_ports()]
    for node in primaries:
        node.script_flush()
    server = ServerThread(server_settings(redis_cluster.url)).start()
    try:
        shas = sorted({s.sha for s in _registered[server.server.ctx.redis]})
        loaded = [node.script_exists(*shas) for node in primaries]
        # As after a failover to a replica that never saw SCRIPT LOAD, or a resharding: the
        # namespace's primary has forgotten every script. Callers must not notice.
        redis_cluster.nodes.client(redis_cluster.owner_of(f"ac:{{{namespace}}}:")).script_flush()
        token = server.issue_token("w", "CONTRIBUTOR", namespace)
        async with AsyncClient(server.address, token=token) as client:
            await client.memory.stash("k", {"v": 1})
            await client.signals.send_signal("s")
            await client.tasks.add_task(task_id="t1", task_type="job")
            claimed = await client.tasks.claim_task(task_types=["job"])
            entries = await client.memory.list_entries()
    finally:
        server.stop()

    assert all(flags == [True] * len(shas) for flags in loaded) and len(loaded) == 3
    assert claimed is not None and claimed.task_id == "t1"
    assert [e.key for e in entries.entries] == ["k"]


async def test_writes_refused_for_want_of_replicas_fail_unavailable(odd_nodes, tmp_path, namespace):
    # min-replicas-to-write (README, "Failover"): a primary without enough replicas refuses
    # writes with NOREPLICAS, which is "retry later", not a bug.
    standalone, _ = odd_nodes
    server = ServerThread(server_settings(f"redis://127.0.0.1:{standalone}")).start()
    admin = RedisNodes(tmp_path).client(standalone)
    try:
        token = server.issue_token("w", "CONTRIBUTOR", namespace)
        admin.config_set("min-replicas-to-write", 1)
        async with AsyncClient(server.address, token=token) as client:
            with pytest.raises(AgentcoordError) as refused:
                await client.memory.stash("k", 1)
            with pytest.raises(AgentcoordError) as refused_signal:
                await client.signals.send_signal("s")
    finally:
        admin.config_set("min-replicas-to-write", 0)
        server.stop()

    for error in (refused.value, refused_signal.value):
        assert error.code.name == "UNAVAILABLE" and error.reason == "REDIS_UNAVAILABLE"


async def test_redis_pys_error_for_a_connection_closed_under_it_is_unavailable(redis_cluster):
    # redis/redis-py#4287: during a failover the cluster client may tear down a connection
    # another task is writing on, and redis-py raises AttributeError/TypeError instead of
    # ConnectionError. Produced here for real on a connection whose writer is gone.
    connection = Connection(host="127.0.0.1", port=redis_cluster.ports[0])
    await connection.connect()
    writer, connection._writer = connection._writer, None
    try:
        with pytest.raises((AttributeError, TypeError)) as raised:
            await connection._send_packed_command([b"PING\r\n"])
    finally:
        assert writer is not None
        writer.close()

    assert isinstance(_translate(raised.value), Unavailable)
    assert not isinstance(_translate(AttributeError("ours")), Unavailable)


def test_uvloops_error_for_a_connection_closed_under_it_is_unavailable(redis_cluster):
    # The same race on uvloop (as the server runs): RuntimeError "the handler is closed".
    async def write_on_a_closed_transport() -> BaseException:
        connection = Connection(host="127.0.0.1", port=redis_cluster.ports[0])
        await connection.connect()
        assert connection._writer is not None
        connection._writer.transport.abort()
        await asyncio.sleep(0)
        try:
            await connection._send_packed_command([b"PING\r\n"])
        except Exception as error:
            return error
        raise AssertionError("the write on a closed transport succeeded")

    error = uvloop.run(write_on_a_closed_transport())

    assert isinstance(error, RuntimeError)
    assert isinstance(_translate(error), Unavailable)
