"""Namespace quotas (issue #14 item 2): set by the OPERATOR, read by the namespace's STEWARD;
a call over a quota is RESOURCE_EXHAUSTED QUOTA_EXCEEDED with the quota's name, limit and use,
and writes nothing; the signal rate is one bucket in Redis for every server process."""

from __future__ import annotations

import signal
import time
import uuid

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import memory_pb2, signals_pb2, signals_pb2_grpc
from agentcoord_server.identity import OPERATOR_NAMESPACE
from agentcoord_server.store.live_subscriptions import live_key

from .conftest import server_settings
from .support import ServerThread
from .test_ops_cli import cli, json_lines

pytestmark = pytest.mark.every_backend


@pytest.fixture
def operator(server):
    client = Client(server.address, token=server.issue_token("operator", "OPERATOR", OPERATOR_NAMESPACE))
    yield client
    client.close()


@pytest.fixture
def team(server, operator):
    """A registered namespace and a client of its first STEWARD (issued by the operator)."""
    name = f"q{uuid.uuid4().hex[:12]}"
    operator.admin.create_namespace(name)
    token = operator.admin.issue_token("lead", "STEWARD", namespace=name).token
    client = Client(server.address, token=token)
    yield name, client, token
    client.close()


def usage(response) -> dict[str, tuple[int, int]]:
    return {u.name: (u.limit, u.used) for u in response.usage}


def test_the_token_quota_refuses_the_token_beyond_it_and_writes_nothing(operator, team):
    name, steward, _ = team
    operator.admin.update_namespace_quota(name, max_tokens=2)
    steward.admin.issue_token("worker-1", "CONTRIBUTOR")

    with pytest.raises(AgentcoordError) as caught:
        steward.admin.issue_token("worker-2", "CONTRIBUTOR")
    listed = [t.agent_id for t in steward.admin.iter_tokens()]

    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    metadata = caught.value.metadata
    assert (metadata["quota"], metadata["limit"], metadata["used"]) == ("tokens", "2", "2")
    assert listed == ["lead", "worker-1"]
    assert usage(steward.admin.get_namespace_quota())["tokens"] == (2, 2)


def test_a_steward_reads_its_own_quotas_only_and_cannot_set_them(operator, team):
    name, steward, _ = team
    other = f"q{uuid.uuid4().hex[:12]}"
    operator.admin.create_namespace(other)
    operator.admin.update_namespace_quota(name, max_tokens=5, max_signals_per_second=7)

    own = steward.admin.get_namespace_quota()
    with pytest.raises(AgentcoordError) as update:
        steward.admin.update_namespace_quota(name, max_tokens=100)
    with pytest.raises(AgentcoordError) as foreign:
        steward.admin.get_namespace_quota(other)

    assert own.namespace == name
    assert (own.quota.max_tokens, own.quota.max_signals_per_second) == (5, 7)
    assert usage(own) == {
        "tokens": (5, 1),
        "signals_per_second": (7, 0),
        "pending_tasks": (0, 0),
        "live_subscriptions": (0, 0),
        **NO_MEMORY_USE,
    }
    assert update.value.reason == "TIER_TOO_LOW"
    assert foreign.value.reason == "NAMESPACE_MISMATCH"


def test_the_pending_tasks_quota_counts_every_type_and_frees_up_on_claim(operator, team):
    name, steward, _ = team
    operator.admin.update_namespace_quota(name, max_pending_tasks=2)
    steward.tasks.add_task(task_type="build", task_id="t1")
    steward.tasks.add_task(task_type="lint", task_id="t2")

    with pytest.raises(AgentcoordError) as caught:
        steward.tasks.add_task(task_type="build", task_id="t3")
    with pytest.raises(AgentcoordError) as missing:
        steward.tasks.get_task("t3")
    steward.tasks.claim_task(task_types=["build"])
    steward.tasks.add_task(task_type="build", task_id="t3")  # a claim made room

    metadata = caught.value.metadata
    assert caught.value.reason == "QUOTA_EXCEEDED"
    assert (metadata["quota"], metadata["limit"], metadata["used"]) == ("pending_tasks", "2", "2")
    assert missing.value.reason == "TASK_NOT_FOUND"  # the refused add wrote nothing
    assert usage(steward.admin.get_namespace_quota())["pending_tasks"] == (2, 2)


def test_quotas_of_an_unregistered_namespace_cannot_be_set(operator):
    with pytest.raises(AgentcoordError) as caught:
        operator.admin.update_namespace_quota(f"q{uuid.uuid4().hex[:12]}", max_tokens=1)

    assert caught.value.reason == "NAMESPACE_NOT_FOUND"


@pytest.mark.standalone_only  # starts a second server process on the session's Redis
def test_the_signal_rate_is_one_bucket_shared_by_every_server(server, operator, team, redis_url):
    name, steward, token = team
    operator.admin.update_namespace_quota(name, max_signals_per_second=1)
    second = ServerThread(server_settings(redis_url)).start()
    try:
        with Client(second.address, token=token) as elsewhere:
            accepted = refused = 0
            # One signal per second: twenty sends in a row meet an empty bucket long before
            # twenty seconds pass.
            for _ in range(20):
                try:
                    steward.signals.send_signal("tick", {})
                    accepted += 1
                except AgentcoordError as exc:
                    assert exc.reason == "QUOTA_EXCEEDED"
                    assert (exc.metadata["quota"], exc.metadata["limit"]) == ("signals_per_second", "1")
                    refused += 1
                    break
            with pytest.raises(AgentcoordError) as on_the_other_server:
                elsewhere.signals.send_signal("tick", {})
            kept = steward.signals.receive_signals(["tick"], limit=100).signals
    finally:
        second.stop()

    assert refused == 1
    assert on_the_other_server.value.reason == "QUOTA_EXCEEDED"
    assert len(kept) == accepted  # refused sends wrote nothing


def test_the_cli_sets_and_shows_a_namespaces_quotas(server, team):
    name, _, steward_token = team
    operator_token = server.issue_token("operator", "OPERATOR", OPERATOR_NAMESPACE)

    set_result = cli(server, operator_token, "namespaces", "quota", name, "--max-tokens", "3", "--json")
    kept = cli(server, operator_token, "namespaces", "quota", name, "--max-signals-per-second", "9", "--json")
    shown = cli(server, steward_token, "namespaces", "quota")

    assert set_result.exit_code == 0, set_result.output
    quotas = {q["name"]: q for q in json_lines(kept.output, "quotas")[0]["quotas"]}
    assert (quotas["tokens"]["limit"], quotas["signals_per_second"]["limit"]) == ("3", "9")
    assert shown.exit_code == 0 and "tokens" in shown.output and name in shown.output


# --- The live-subscriptions quota: open streams counted over every server process, with a
# lease so a killed server's streams stop counting.


class Stream:
    """A raw Subscribe call held open: admitted once its first (cursor-only) response came."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        stub = signals_pb2_grpc.SignalServiceStub(self.channel)
        self.call = stub.Subscribe(
            signals_pb2.SubscribeRequest(), metadata=[("authorization", f"Bearer {token}")]
        )

    def admitted(self) -> bool:
        return bool(next(self.call).cursor)

    def refusal(self) -> AgentcoordError:
        try:
            next(self.call)
        except grpc.RpcError as exc:
            return AgentcoordError.from_rpc_error(exc)
        raise AssertionError("the stream was opened")

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def live_use(client: Client) -> tuple[int, int]:
    return usage(client.admin.get_namespace_quota())["live_subscriptions"]


def redis_ms(client) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_live_subscriptions_quota_counts_the_streams_of_every_server(
    server, operator, team, redis_url, redis_client
):
    name, steward, token = team
    operator.admin.update_namespace_quota(name, max_live_subscriptions=2)
    steward.signals.send_signal("tick", {})  # an admitted subscribe from the oldest yields it
    # A short lease: the second server's stream keeps counting past it only if it is renewed.
    second = ServerThread(server_settings(redis_url, subscription_lease_seconds=0.5)).start()
    streams: list[Stream] = []
    try:
        streams = [Stream(server.address, token), Stream(second.address, token)]
        opened = [s.admitted() for s in streams]
        first_expiry = min(score for _, score in redis_client.zrange(live_key(name), 0, -1, withscores=True))
        wait_for(lambda: redis_ms(redis_client) > first_expiry, "the first lease to run out")
        refused_here = Stream(server.address, token).refusal()
        refused_there = Stream(second.address, token).refusal()
        with pytest.raises(AgentcoordError) as by_the_client:
            # Raised at once, not retried: a retry would first sleep past the test's timeout.
            next(iter(steward.signals.subscribe(earliest=True, backoff=600, max_backoff=600)))
        full = live_use(steward)
        streams.pop().close()
        wait_for(lambda: live_use(steward) == (2, 1), "the ended stream to stop counting")
        streams.append(Stream(second.address, token))
        reopened = streams[-1].admitted()
    finally:
        for stream in streams:
            stream.close()
        second.stop()

    assert opened == [True, True]
    for refused in (refused_here, refused_there, by_the_client.value):
        assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        metadata = refused.metadata
        assert (metadata["quota"], metadata["limit"], metadata["used"]) == ("live_subscriptions", "2", "2")
    assert full == (2, 2)
    assert reopened


@pytest.mark.standalone_only  # a server subprocess on the session's Redis, SIGKILLed
def test_a_killed_servers_subscriptions_stop_counting_when_their_lease_runs_out(
    server, operator, team, redis_url, tmp_path
):
    from .test_faults import ServeProcess

    name, steward, token = team
    operator.admin.update_namespace_quota(name, max_live_subscriptions=2)
    killed = ServeProcess(tmp_path, "--subscription-lease-seconds", "1", redis_url=redis_url)
    streams: list[Stream] = []
    try:
        address = killed.wait_serving()
        streams = [Stream(address, token), Stream(address, token)]
        opened = [s.admitted() for s in streams]
        refused = Stream(server.address, token).refusal()
        killed.process.send_signal(signal.SIGKILL)
        killed.wait()
        # Nothing ended those streams on the server: only their leases running out frees them.
        wait_for(lambda: live_use(steward) == (2, 0), "the killed server's streams to stop counting")
        survivors = [Stream(server.address, token), Stream(server.address, token)]
        streams += survivors
        reopened = [s.admitted() for s in survivors]
    finally:
        for stream in streams:
            stream.close()
        killed.close()

    assert opened == [True, True]
    assert (refused.reason, refused.metadata["used"]) == ("QUOTA_EXCEEDED", "2")
    assert reopened == [True, True]


def test_the_cli_sets_the_live_subscriptions_quota(server, team):
    name, _, _ = team
    operator_token = server.issue_token("operator", "OPERATOR", OPERATOR_NAMESPACE)

    result = cli(server, operator_token, "namespaces", "quota", name, "--max-live-subscriptions", "4", "--json")

    assert result.exit_code == 0, result.output
    quotas = {q["name"]: q for q in json_lines(result.output, "quotas")[0]["quotas"]}
    assert quotas["live_subscriptions"]["limit"] == "4"


# --- working-memory quotas (issue #14 item 2, with issue #16's namespace-wide counts) -------

NO_MEMORY_USE = {"memory_entries": (0, 0), "memory_bytes": (0, 0)}


def test_the_memory_entries_quota_refuses_new_keys_but_not_overwrites(operator, team):
    name, steward, _ = team
    operator.admin.update_namespace_quota(name, max_memory_entries=2)
    steward.memory.stash("a", 1)
    steward.memory.stash("b", 2)

    with pytest.raises(AgentcoordError) as caught:
        steward.memory.stash("c", 3)
    with pytest.raises(AgentcoordError) as batch:
        steward.memory.batch_stash({"a": 10, "d": 4})
    steward.memory.stash("a", 11)  # an overwrite adds no entry
    steward.memory.delete_entry("b")
    steward.memory.stash("c", 3)  # the delete made room

    metadata = caught.value.metadata
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == "QUOTA_EXCEEDED"
    assert (metadata["quota"], metadata["limit"], metadata["used"]) == ("memory_entries", "2", "2")
    assert batch.value.reason == "QUOTA_EXCEEDED"
    assert steward.memory.retrieve("a") == 11  # the refused batch wrote nothing
    assert usage(steward.admin.get_namespace_quota())["memory_entries"] == (2, 2)


def test_the_memory_bytes_quota_counts_value_bytes_and_frees_them_on_expiry(operator, team):
    name, steward, _ = team
    first = steward.memory.stash("big", "x" * 100, ttl=0.3)
    operator.admin.update_namespace_quota(name, max_memory_bytes=first.size_bytes + 50)

    with pytest.raises(AgentcoordError) as caught:
        steward.memory.stash("more", "y" * 100)
    with pytest.raises(AgentcoordError) as missing:
        steward.memory.retrieve("more")
    events = steward.memory.watch_entries(after_revision=first.revision)
    expired = next(events)  # the sweep ended "big" and gave its bytes back
    events.close()
    steward.memory.stash("more", "y" * 100)

    metadata = caught.value.metadata
    assert (metadata["quota"], metadata["used"]) == ("memory_bytes", str(first.size_bytes))
    assert missing.value.reason == "ENTRY_NOT_FOUND"
    assert (expired.key, expired.type) == ("big", 3)  # ENTRY_EVENT_TYPE_EXPIRE
    used = usage(steward.admin.get_namespace_quota())["memory_bytes"]
    assert used == (first.size_bytes + 50, first.size_bytes)


def test_a_watch_counts_toward_the_live_subscriptions_quota(operator, team):
    name, steward, _ = team
    operator.admin.update_namespace_quota(name, max_live_subscriptions=1)
    stub = steward.memory._stub
    opened = stub.WatchEntries(memory_pb2.WatchEntriesRequest())
    second = None
    try:
        first = next(opened)  # the open watch counts
        second = stub.WatchEntries(memory_pb2.WatchEntriesRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as refused_watch:
            next(second)  # admitted, it would answer with its start revision
        with pytest.raises(AgentcoordError) as refused_subscribe:
            next(iter(steward.signals.subscribe(backoff=600, max_backoff=600)))
    finally:
        opened.cancel()
        if second is not None:
            second.cancel()

    assert first.revision == 0
    for error in (AgentcoordError.from_rpc_error(refused_watch.value), refused_subscribe.value):
        assert (error.reason, error.metadata["quota"]) == ("QUOTA_EXCEEDED", "live_subscriptions")
