"""SignalService, polled: SendSignal and ReceiveSignals against the real server and Redis.

Streaming (Subscribe, fan-out, resume) is in test_signals_stream.py.
"""

from __future__ import annotations

import time

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord_server.config import TtlPolicy

from .conftest import server_settings
from .support import ServerThread

pytestmark = pytest.mark.every_backend


def stream_key(ns: str) -> str:
    return f"ac:{{{ns}}}:signals"


def make_session(clients, session_id: str) -> None:
    """A MemoryService session: the first client creates it, the others join."""
    first, *others = clients
    first.memory.create_session(session_id)
    for other in others:
        other.memory.join_session(session_id)


def types_of(response) -> list[str]:
    return [s.signal_type for s in response.signals]


def test_two_signals_of_the_same_type_both_come_back_in_send_order(make_client):
    alice = make_client("alice")
    sent = [alice.signals.send_signal("progress", {"step": i}) for i in range(5)]

    got = alice.signals.receive_signals().signals

    assert [s.id for s in got] == [s.id for s in sent]
    assert [s.data["step"] for s in got] == [0, 1, 2, 3, 4]
    assert [int(s.id.split("-")[0]) for s in got] == sorted(int(s.id.split("-")[0]) for s in got)


def test_send_returns_the_signal_with_id_sender_and_send_time(make_client):
    before = time.time()
    signal = make_client("alice").signals.send_signal(
        "analysis_complete", {"files": 10, "tags": ["a", "b"]}, target_agent="lead"
    )
    after = time.time()

    assert signal.id and signal.sender == "alice" and signal.target_agent == "lead"
    assert signal.data["files"] == 10 and list(signal.data["tags"]) == ["a", "b"]
    assert before - 1 <= signal.send_time.ToMilliseconds() / 1000 <= after + 1


def test_targeted_signal_is_seen_only_by_its_sender_and_its_target(make_client):
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    private = alice.signals.send_signal("secret", {"x": 1}, target_agent="bob")
    public = alice.signals.send_signal("news")

    assert [s.id for s in alice.signals.receive_signals().signals] == [private.id, public.id]
    assert [s.id for s in bob.signals.receive_signals().signals] == [private.id, public.id]
    assert [s.id for s in carol.signals.receive_signals().signals] == [public.id]
    assert carol.signals.receive_signals(["secret"]).signals == []


def test_type_filter_applies_to_broadcast_targeted_and_session_signals(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    make_session([alice, bob], "review")
    alice.signals.send_signal("noise")
    alice.signals.send_signal("noise", target_agent="bob")
    alice.signals.send_signal("noise", session_id="review")
    wanted = [
        alice.signals.send_signal("done"),
        alice.signals.send_signal("done", target_agent="bob"),
        alice.signals.send_signal("done", session_id="review"),
    ]
    alice.signals.send_signal("other", session_id="review")

    got = bob.signals.receive_signals(["done"]).signals

    assert [s.id for s in got] == [s.id for s in wanted]
    assert [(s.target_agent, s.session_id) for s in got] == [("", ""), ("bob", ""), ("", "review")]
    assert types_of(bob.signals.receive_signals(["done", "other"])) == ["done"] * 3 + ["other"]


def test_session_signal_reaches_the_participants_at_send_time_only(make_client):
    alice, bob, carol, dave = (make_client(a) for a in ("alice", "bob", "carol", "dave"))
    make_session([alice, bob], "s1")
    first = alice.signals.send_signal("sync", session_id="s1")
    carol.memory.join_session("s1")
    bob.memory.leave_session("s1")
    second = alice.signals.send_signal("sync", session_id="s1")

    assert [s.id for s in bob.signals.receive_signals().signals] == [first.id]
    assert [s.id for s in carol.signals.receive_signals().signals] == [second.id]
    assert [s.id for s in alice.signals.receive_signals().signals] == [first.id, second.id]
    assert dave.signals.receive_signals().signals == []


def test_a_session_signal_from_a_non_participant_reaches_the_participants(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    make_session([bob], "s2")
    sent = alice.signals.send_signal("ping", session_id="s2")

    assert [s.id for s in bob.signals.receive_signals().signals] == [sent.id]
    assert [s.id for s in alice.signals.receive_signals().signals] == [sent.id]


def test_sending_to_a_missing_session_is_not_found_and_writes_nothing(
    make_client, redis_client, namespace
):
    alice = make_client("alice")
    with pytest.raises(AgentcoordError) as caught:
        alice.signals.send_signal("sync", session_id="ghost")

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "SESSION_NOT_FOUND"
    assert redis_client.exists(stream_key(namespace)) == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"signal_type": ""}, "signal_type"),
        ({"signal_type": "a:b"}, "signal_type"),
        ({"signal_type": "ok", "target_agent": "x*"}, "target_agent"),
        ({"signal_type": "ok", "session_id": "s:1"}, "session_id"),
        ({"signal_type": "ok", "target_agent": "bob", "session_id": "s1"}, "session_id"),
    ],
)
def test_bad_send_is_invalid_argument_naming_the_field_and_writes_nothing(
    make_client, redis_client, namespace, kwargs, field
):
    with pytest.raises(AgentcoordError) as caught:
        make_client("alice").signals.send_signal(**kwargs)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == [field]
    assert redis_client.exists(stream_key(namespace)) == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"after_id": "abc"}, "after_id"),
        ({"after_id": "12-3-4"}, "after_id"),
        ({"after_id": "99999999999999999999-0"}, "after_id"),  # past Redis's 64-bit ids
        ({"after_id": "1-18446744073709551616"}, "after_id"),
        ({"after_id": "18446744073709551615-18446744073709551615"}, "after_id"),  # nothing after
        ({"limit": -1}, "limit"),
        ({"signal_types": ["ok", "bad type"]}, "signal_types[1]"),
    ],
)
def test_bad_receive_is_invalid_argument_naming_the_field(make_client, kwargs, field):
    with pytest.raises(AgentcoordError) as caught:
        make_client("alice").signals.receive_signals(**kwargs)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == [field]


def test_observer_may_receive_but_not_send(make_client, redis_client, namespace):
    observer = make_client("watcher", tier="OBSERVER")
    with pytest.raises(AgentcoordError) as caught:
        observer.signals.send_signal("hello")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert redis_client.exists(stream_key(namespace)) == 0
    assert observer.signals.receive_signals().signals == []


def test_receiving_is_non_destructive_and_the_cursor_continues_where_it_stopped(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    ids = [alice.signals.send_signal("tick", {"n": i}).id for i in range(7)]

    again = [s.id for s in bob.signals.receive_signals().signals]
    page1 = bob.signals.receive_signals(limit=3)
    page2 = bob.signals.receive_signals(after_id=page1.next_after_id, limit=3)
    page3 = bob.signals.receive_signals(after_id=page2.next_after_id, limit=3)

    assert again == ids
    assert [s.id for s in page1.signals] == ids[:3] and page1.more
    assert [s.id for s in page2.signals] == ids[3:6] and page2.more
    assert [s.id for s in page3.signals] == ids[6:] and not page3.more
    assert page3.next_after_id == ids[-1]
    assert [s.id for s in bob.signals.receive_signals().signals] == ids


def test_cursor_skips_over_signals_the_caller_may_not_see(make_client):
    alice, carol = make_client("alice"), make_client("carol")
    for _ in range(5):
        alice.signals.send_signal("dm", target_agent="bob")
    last = alice.signals.send_signal("dm", target_agent="bob")

    page = carol.signals.receive_signals()

    assert page.signals == [] and not page.more
    assert page.next_after_id == last.id


def test_signals_of_another_namespace_are_invisible(make_client):
    make_client("alice", ns="elsewhere-signals").signals.send_signal("hello")

    assert make_client("alice").signals.receive_signals().signals == []


@pytest.fixture
def short_retention_server(redis_url):
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(coordination=1))).start()
    yield handle
    handle.stop()


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_signals_older_than_retention_are_trimmed_and_an_older_cursor_is_out_of_range(
    short_retention_server, credentials, redis_client, namespace
):
    from agentcoord import Client

    with Client(short_retention_server.address, **credentials("alice")) as alice:
        s0 = alice.signals.send_signal("old")
        s1 = alice.signals.send_signal("old")
        time.sleep(1.1)
        s2 = alice.signals.send_signal("new")

        assert redis_client.xlen(stream_key(namespace)) == 1
        assert [s.id for s in alice.signals.receive_signals().signals] == [s2.id]
        # Nothing after s1 was lost, so s1 is still a valid cursor …
        assert [s.id for s in alice.signals.receive_signals(after_id=s1.id).signals] == [s2.id]
        # … but s1 itself was dropped after s0: resuming after s0 would silently skip it.
        with pytest.raises(AgentcoordError) as caught:
            alice.signals.receive_signals(after_id=s0.id)

    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert caught.value.reason == "CURSOR_TRIMMED"


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_an_idle_stream_is_trimmed_when_read(
    short_retention_server, credentials, redis_client, namespace
):
    from agentcoord import Client

    with Client(short_retention_server.address, **credentials("alice")) as alice:
        first = alice.signals.send_signal("old")
        time.sleep(1.1)
        page = alice.signals.receive_signals()
        with pytest.raises(AgentcoordError) as caught:
            alice.signals.receive_signals(after_id="0-1")

    assert page.signals == []
    assert redis_client.xlen(stream_key(namespace)) == 0
    assert redis_client.get(f"ac:{{{namespace}}}:signals:trimmed") == first.id
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE


def test_a_large_trim_records_exactly_the_newest_dropped_id(make_client, redis_client, namespace):
    """2500 expired entries (ids from 1970, written straight into the stream) are dropped by the
    next send, in several batches; the marker is exactly the newest of them."""
    pipe = redis_client.pipeline(transaction=False)
    for seq in range(1, 2501):
        pipe.xadd(stream_key(namespace), {"t": "old", "s": "ghost"}, id=f"1000-{seq}")
    pipe.execute()
    alice = make_client("alice")

    fresh = alice.signals.send_signal("new")

    assert redis_client.xlen(stream_key(namespace)) == 1
    assert redis_client.get(f"ac:{{{namespace}}}:signals:trimmed") == "1000-2500"
    assert [s.id for s in alice.signals.receive_signals(after_id="1000-2500").signals] == [fresh.id]
    with pytest.raises(AgentcoordError) as caught:
        alice.signals.receive_signals(after_id="1000-2499")
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
