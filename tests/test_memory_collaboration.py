"""Collaboration state: typed save/load, versions with compare-and-set, trajectory bound, no TTL,
survival across restarts of the server and the embedded Redis (MemoryService)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import memory_pb2
from agentcoord_server.config import Settings
from agentcoord_server.store.keys import Keyspace
from google.protobuf import struct_pb2, timestamp_pb2

from .support import ServerThread
from .test_memory import error_of, namespace_keys

pytestmark = pytest.mark.every_backend


def sample_state(**overrides) -> memory_pb2.CollaborationState:
    extra = struct_pb2.Struct()
    extra.update({"preferences": {"verbosity": "low", "languages": ["py", "go"]}, "notes": None})
    state = memory_pb2.CollaborationState(
        trust_level=0.85,
        successful_interventions=15,
        failed_interventions=2,
        total_interactions=40,
        current_empathy_level=4,
        trust_trajectory=[0.5, 0.6, 0.85],
        session_start=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_000_000),
        extra=extra,
    )
    for name, value in overrides.items():
        if name == "trust_trajectory":
            state.ClearField(name)
            state.trust_trajectory.extend(value)
        elif name == "session_start":
            state.session_start.CopyFrom(value)
        else:
            setattr(state, name, value)
    return state


def test_saved_state_loads_back_with_every_field(make_client):
    client = make_client()
    state = sample_state()

    version = client.memory.save_collaboration_state("s1", state)
    record = client.memory.load_collaboration_state("s1")

    assert version == 1
    assert record.state == state
    assert record.version == 1
    assert record.owner == "agent-1"
    assert record.session_id == "s1"


def test_state_can_be_given_as_a_dict(make_client):
    client = make_client()

    client.memory.save_collaboration_state(
        "s1", {"trust_level": 0.8, "successful_interventions": 10}
    )

    state = client.memory.load_collaboration_state("s1").state
    assert (state.trust_level, state.successful_interventions) == (0.8, 10)


def test_each_save_increments_the_version(make_client):
    client = make_client()

    versions = [
        client.memory.save_collaboration_state("s1", sample_state(total_interactions=i))
        for i in range(3)
    ]

    assert versions == [1, 2, 3]
    assert client.memory.load_collaboration_state("s1").state.total_interactions == 2


def test_expected_version_mismatch_is_aborted_and_keeps_the_stored_state(make_client):
    client = make_client()
    client.memory.save_collaboration_state("s1", sample_state(trust_level=0.1))
    client.memory.save_collaboration_state("s1", sample_state(trust_level=0.2))

    error = error_of(
        client.memory.save_collaboration_state,
        "s1",
        sample_state(trust_level=0.9),
        expected_version=1,
    )

    assert error.code == grpc.StatusCode.ABORTED
    assert error.reason == "VERSION_MISMATCH"
    assert error.metadata["version"] == "2"
    record = client.memory.load_collaboration_state("s1")
    assert (record.version, record.state.trust_level) == (2, 0.2)


def test_matching_expected_version_saves(make_client):
    client = make_client()
    client.memory.save_collaboration_state("s1", sample_state())

    version = client.memory.save_collaboration_state(
        "s1", sample_state(trust_level=0.3), expected_version=1
    )

    assert version == 2


async def test_twenty_concurrent_first_saves_with_expected_version_zero_make_exactly_one(
    make_aclient,
):
    clients = [make_aclient("agent-1") for _ in range(20)]

    results = await asyncio.gather(
        *(
            c.memory.save_collaboration_state(
                "s1", sample_state(total_interactions=i), expected_version=0
            )
            for i, c in enumerate(clients)
        ),
        return_exceptions=True,
    )

    saved = [r for r in results if r == 1]
    aborted = [
        r for r in results if isinstance(r, AgentcoordError) and r.code == grpc.StatusCode.ABORTED
    ]
    assert (len(saved), len(aborted)) == (1, 19)
    record = await clients[0].memory.load_collaboration_state("s1")
    assert record.version == 1
    assert record.state.total_interactions == results.index(1)


def test_trust_trajectory_keeps_the_last_100_points(make_client):
    client = make_client()
    points = [round(i / 150, 6) for i in range(150)]

    client.memory.save_collaboration_state("s1", sample_state(trust_trajectory=points))

    assert (
        list(client.memory.load_collaboration_state("s1").state.trust_trajectory) == points[-100:]
    )


def test_loading_a_state_never_saved_is_not_found(make_client):
    error = error_of(make_client().memory.load_collaboration_state, "never")

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "COLLABORATION_STATE_NOT_FOUND"


def test_states_are_per_agent(make_client):
    make_client("agent-1").memory.save_collaboration_state("s1", sample_state())

    error = error_of(make_client("agent-2").memory.load_collaboration_state, "s1")

    assert error.code == grpc.StatusCode.NOT_FOUND


def test_states_are_invisible_to_other_namespaces(make_client):
    make_client("agent-1").memory.save_collaboration_state("s1", sample_state())
    outsider = make_client("agent-1", ns="other")

    assert (
        error_of(outsider.memory.load_collaboration_state, "s1").code == grpc.StatusCode.NOT_FOUND
    )
    assert list(outsider.memory.list_collaboration_states().records) == []


def test_collaboration_state_has_no_ttl(make_client, namespace, redis_client):
    make_client().memory.save_collaboration_state("s1", sample_state())

    assert redis_client.pttl(Keyspace(namespace).key("collab", "agent-1", "s1")) == -1
    assert redis_client.pttl(Keyspace(namespace).key("collab-index", "agent-1")) == -1


def test_list_collaboration_states_pages_own_states_in_session_order(make_client):
    mine, theirs = make_client("agent-1"), make_client("agent-2")
    for i in range(5):
        mine.memory.save_collaboration_state(f"s{i}", sample_state(total_interactions=i))
    theirs.memory.save_collaboration_state("t0", sample_state())

    first = mine.memory.list_collaboration_states(page_size=3)
    second = mine.memory.list_collaboration_states(page_size=3, page_token=first.next_page_token)

    records = [*first.records, *second.records]
    assert [r.session_id for r in records] == ["s0", "s1", "s2", "s3", "s4"]
    assert [r.state.total_interactions for r in records] == [0, 1, 2, 3, 4]
    assert second.next_page_token == ""
    assert all(r.owner == "agent-1" for r in records)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"trust_level": 1.5}, "state.trust_level"),
        ({"trust_level": float("nan")}, "state.trust_level"),
        ({"failed_interventions": -1}, "state.failed_interventions"),
        ({"current_empathy_level": 6}, "state.current_empathy_level"),
        ({"trust_trajectory": [0.5, -0.1]}, "state.trust_trajectory[1]"),
        # google.protobuf.Timestamp allows 0001-01-01 to 9999-12-31 only.
        (
            {"session_start": timestamp_pb2.Timestamp(seconds=253_402_300_800)},
            "state.session_start",
        ),
        (
            {"session_start": timestamp_pb2.Timestamp(seconds=-62_135_596_801)},
            "state.session_start",
        ),
    ],
)
def test_out_of_range_fields_are_refused_and_nothing_is_written(
    make_client, namespace, redis_client, overrides, field
):
    error = error_of(make_client().memory.save_collaboration_state, "s1", sample_state(**overrides))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0][0] == field
    assert namespace_keys(redis_client, namespace) == []


def test_observer_cannot_save(make_client, namespace, redis_client):
    error = error_of(
        make_client(tier="OBSERVER").memory.save_collaboration_state, "s1", sample_state()
    )

    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert namespace_keys(redis_client, namespace) == []


def embedded_settings(data_dir) -> Settings:
    return Settings(
        listen="127.0.0.1:0", data_dir=data_dir, auth_cache_seconds=1.0, shutdown_grace=1.0
    )


def test_state_survives_a_restart_of_server_and_embedded_redis(tmp_path):
    state = sample_state()
    first = ServerThread(embedded_settings(tmp_path)).start()
    try:
        with Client(
            first.address, token=first.issue_token("agent-1", "CONTRIBUTOR", "team")
        ) as client:
            client.memory.save_collaboration_state("s1", state)
            client.memory.save_collaboration_state("s1", state)
    finally:
        first.stop()

    second = ServerThread(embedded_settings(tmp_path)).start()
    try:
        with Client(
            second.address, token=second.issue_token("agent-1", "CONTRIBUTOR", "team")
        ) as client:
            record = client.memory.load_collaboration_state("s1")
            listed = client.memory.list_collaboration_states().records
            version = client.memory.save_collaboration_state("s1", state, expected_version=2)
    finally:
        second.stop()

    assert record.state == state
    assert record.version == 2
    assert [r.session_id for r in listed] == ["s1"]
    assert version == 3


def test_large_collaboration_states_are_listed_in_pages_that_fit_a_message(make_client):
    client = make_client()
    state = sample_state()
    state.extra["blob"] = "x" * (900 * 1024)
    for i in range(6):
        client.memory.save_collaboration_state(f"s{i}", state)

    ids, token, pages = [], "", 0
    while True:
        page = client.memory.list_collaboration_states(page_token=token)
        ids += [r.session_id for r in page.records]
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert ids == [f"s{i}" for i in range(6)]
    assert pages > 1
