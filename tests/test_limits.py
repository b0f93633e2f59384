"""Size limits (issue #12, failure 4): every size-limited field is refused before anything is
written, with RESOURCE_EXHAUSTED VALUE_TOO_LARGE naming the field and the limit; every list page
fits one message; no write can succeed and then fail to send its response.

The default message cap is 4 MiB and every field limit 1 MiB (a task echoes its payload and its
result, so two limits and the text fields must fit one message: the server refuses to start
otherwise).
"""

from __future__ import annotations

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import tasks_pb2
from agentcoord_server.app import AgentcoordServer
from agentcoord_server.config import Settings

from .conftest import server_settings
from .support import ServerThread

MiB = 1024 * 1024


def error_of(call, *args, **kwargs) -> AgentcoordError:
    with pytest.raises(AgentcoordError) as info:
        call(*args, **kwargs)
    return info.value


def assert_too_large(error: AgentcoordError, field: str, limit: int = MiB) -> None:
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "VALUE_TOO_LARGE"
    assert error.metadata["field"] == field
    assert error.metadata["limit_bytes"] == str(limit)
    assert int(error.metadata["size_bytes"]) > limit
    assert field in str(error) and str(limit) in str(error)


def test_a_2_5_mb_task_payload_is_refused_before_anything_is_written(make_client):
    client = make_client()

    error = error_of(
        client.tasks.add_task, task_id="big", task_type="t", payload={"blob": "x" * 2_500_000}
    )

    assert_too_large(error, "payload")
    assert error_of(client.tasks.get_task, "big").reason == "TASK_NOT_FOUND"
    assert list(client.tasks.list_tasks().tasks) == []


def test_a_2_mb_result_is_refused_and_the_task_stays_claimed_and_readable(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="t", payload={"p": 1})
    task = client.tasks.claim_task(task_types=["t"])
    assert task is not None

    error = error_of(
        client.tasks.complete_task,
        task_id="t1",
        fencing_token=task.lease.fencing_token,
        result={"blob": "y" * 2_000_000},
    )

    assert_too_large(error, "result")
    assert client.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_CLAIMED
    done = client.tasks.complete_task(
        task_id="t1", fencing_token=task.lease.fencing_token, result={"ok": True}
    )
    assert dict(done.result) == {"ok": True}


def test_a_task_at_both_limits_completes_and_every_read_of_it_succeeds(make_client):
    client = make_client()
    near = MiB - 100  # the serialized Struct adds a few bytes of framing
    client.tasks.add_task(task_id="full", task_type="t", payload={"blob": "p" * near})
    task = client.tasks.claim_task(task_types=["t"])
    assert task is not None

    done = client.tasks.complete_task(
        task_id="full", fencing_token=task.lease.fencing_token, result={"blob": "r" * near}
    )

    assert len(done.result["blob"]) == near and len(done.payload["blob"]) == near
    assert len(client.tasks.get_task("full").result["blob"]) == near
    assert [t.task_id for t in client.tasks.list_tasks().tasks] == ["full"]


def list_all(call, items: str, **kwargs) -> list[list]:
    pages, token = [], ""
    while True:
        page = call(page_token=token, **kwargs)
        pages.append(list(getattr(page, items)))
        token = page.next_page_token
        if not token:
            return pages


def test_six_3_9_mb_tasks_are_refused_and_six_large_ones_list_in_pages_that_fit(make_client):
    client = make_client()
    for i in range(6):
        error = error_of(
            client.tasks.add_task,
            task_id=f"huge-{i}",
            task_type="t",
            payload={"b": "x" * 3_900_000},
        )
        assert_too_large(error, "payload")
    for i in range(6):  # 6 x 0.9 MB: more than one 4 MiB message
        client.tasks.add_task(task_id=f"big-{i}", task_type="t", payload={"b": "x" * 900_000})

    pages = list_all(client.tasks.list_tasks, "tasks", page_size=100)

    assert len(pages) > 1
    assert [t.task_id for page in pages for t in page] == [f"big-{i}" for i in range(6)]


def test_receive_signals_pages_are_cut_to_fit_one_message_and_miss_nothing(make_client):
    client = make_client()
    sent = [client.signals.send_signal("big", {"b": "s" * 900_000}).id for _ in range(6)]

    received, after, calls = [], "", 0
    while True:
        page = client.signals.receive_signals(["big"], after_id=after, limit=100)
        calls += 1
        received += [s.id for s in page.signals]
        after = page.next_after_id
        if not page.more:
            break

    assert received == sent
    assert calls > 1


def test_signal_data_over_the_limit_is_refused_and_not_stored(make_client):
    client = make_client()

    error = error_of(client.signals.send_signal, "big", {"b": "s" * 1_100_000})

    assert_too_large(error, "data")
    assert list(client.signals.receive_signals(["big"]).signals) == []


def test_pattern_code_and_context_over_the_limit_are_refused(make_client):
    client = make_client()
    base = {"pattern_id": "p", "pattern_type": "t", "name": "n", "confidence": 0.5}

    assert_too_large(error_of(client.staging.stage_pattern, **base, code="c" * 1_100_000), "code")
    assert_too_large(
        error_of(client.staging.stage_pattern, **base, context={"c": "c" * 1_100_000}), "context"
    )
    assert error_of(client.staging.get_staged_pattern, "p").reason == "STAGED_PATTERN_NOT_FOUND"


SMALL_LIMITS = {
    f"max_{name}_bytes": 64 * 1024 for name in ("task", "signal", "pattern", "conflict", "value")
}


@pytest.fixture(scope="module")
def small_server(redis_url):
    """A server whose messages are 512 KiB (its field limits 64 KiB), so pages fill cheaply."""
    handle = ServerThread(
        server_settings(
            redis_url,
            max_message_bytes=512 * 1024,
            **{**SMALL_LIMITS, "max_pattern_bytes": 128 * 1024},
        )
    ).start()
    yield handle
    handle.stop()


def test_pattern_pages_fit_a_message_even_where_the_wire_form_outgrows_the_stored_json(
    small_server, credentials
):
    # 11,000 zeros: 22 KB as stored JSON, ~121 KB as a google.protobuf.ListValue. Five of them
    # are under the store's cut (half a message of stored bytes) but over one message on the
    # wire.
    with Client(small_server.address, **credentials()) as client:
        for i in range(5):
            client.staging.stage_pattern(
                pattern_id=f"p{i}",
                pattern_type="t",
                name="n",
                confidence=0.5,
                context={"zeros": [0] * 11_000},
            )

        pages = list_all(client.staging.list_staged_patterns, "patterns", page_size=100)

    assert len(pages) > 1
    assert sorted(p.pattern_id for page in pages for p in page) == [f"p{i}" for i in range(5)]


def test_conflict_positions_over_the_limit_are_refused(make_client):
    client = make_client()
    positions = {f"agent-{i}": "x" * 16_000 for i in range(70)}  # ~1.1 MB

    error = error_of(client.staging.create_conflict, conflict_id="c1", positions=positions)

    assert_too_large(error, "positions")
    assert error_of(client.staging.get_conflict, "c1").reason == "CONFLICT_NOT_FOUND"


def test_agent_pages_are_cut_to_fit_a_small_message_limit(small_server, credentials):
    capabilities = [f"cap-{i:03d}-" + "c" * 120 for i in range(64)]  # ~8.5 KB per agent
    for i in range(80):
        with Client(small_server.address, **credentials(f"agent-{i:02d}")) as agent:
            agent.tasks.register_agent(capabilities)
    with Client(small_server.address, **credentials("reader", "OBSERVER")) as reader:
        pages = list_all(reader.tasks.list_agents, "agents", page_size=1000)

    assert len(pages) > 1
    assert [a.agent_id for page in pages for a in page] == [f"agent-{i:02d}" for i in range(80)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_task_bytes": 2_500_000},  # payload + result could not be sent back
        {"max_task_bytes": 1_500_000},  # completed task + claim_next's next task could not
        {"max_pattern_bytes": 2 * MiB},
        {"max_conflict_bytes": 2 * MiB},
        {"max_signal_bytes": 4 * MiB},
        {"max_value_bytes": 4 * MiB},
        {"max_message_bytes": 1 * MiB},  # the 1 MiB defaults no longer fit
    ],
)
def test_a_server_whose_limits_would_not_fit_a_message_refuses_to_start(overrides):
    with pytest.raises(ValueError, match="too large for --max-message-bytes"):
        AgentcoordServer(Settings(**overrides))


def test_a_session_takes_at_most_1000_participants_so_its_responses_fit_a_message(
    make_client, redis_client, namespace
):
    lead = make_client("lead")
    lead.memory.create_session("s1")
    members = f"ac:{{{namespace}}}:sessions:s1:participants"
    redis_client.sadd(members, *[f"agent-{i:04d}-" + "x" * 118 for i in range(998)])
    assert len(make_client("joiner").memory.join_session("s1").participants) == 1000

    error = error_of(make_client("late").memory.join_session, "s1")

    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SESSION_FULL")
    assert error.metadata["limit"] == "1000"
    assert redis_client.scard(members) == 1000
    assert len(make_client("joiner").memory.join_session("s1").participants) == 1000  # rejoin
