"""Every bad request gets a clear status (issue #12, failures 5 and 6).

- NaN or ±Infinity anywhere in a JSON-like field (google.protobuf.Struct/Value) is
  INVALID_ARGUMENT NON_FINITE_NUMBER naming the field's path, and nothing is written.
- A request body that does not parse (random bytes, invalid UTF-8 in a string field, nesting past
  protobuf's depth limit) is INVALID_ARGUMENT MALFORMED_REQUEST with a request id and a
  canonical log line, for unary and streaming methods alike.
"""

from __future__ import annotations

import io
import json
import math
import time

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.v1 import memory_pb2, signals_pb2
from agentcoord_server.logs import configure_logging

NAN, INF = math.nan, math.inf


def error_of(call, *args, **kwargs) -> AgentcoordError:
    with pytest.raises(AgentcoordError) as info:
        call(*args, **kwargs)
    return info.value


def assert_non_finite(error: AgentcoordError, path: str) -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "NON_FINITE_NUMBER"
    assert [field for field, _ in error.field_violations] == [path]
    assert error.metadata["field"] == path


def test_nan_in_signal_data_is_invalid_argument_and_nothing_is_sent(make_client):
    client = make_client()

    assert_non_finite(error_of(client.signals.send_signal, "s", {"x": NAN}), "data.x")
    assert list(client.signals.receive_signals(["s"]).signals) == []


def test_infinity_deep_in_a_task_payload_is_named_by_its_path(make_client):
    client = make_client()

    error = error_of(
        client.tasks.add_task, task_id="t1", task_type="t", payload={"a": [1, 2, {"b": INF}]}
    )

    assert_non_finite(error, "payload.a[2].b")
    assert error_of(client.tasks.get_task, "t1").reason == "TASK_NOT_FOUND"


def test_minus_infinity_in_a_result_is_refused_and_the_task_stays_claimed(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="t")
    task = client.tasks.claim_task(task_types=["t"])
    assert task is not None

    error = error_of(
        client.tasks.complete_task,
        task_id="t1",
        fencing_token=task.lease.fencing_token,
        result={"r": -INF},
    )

    assert_non_finite(error, "result.r")
    assert client.tasks.get_task("t1").lease.fencing_token == task.lease.fencing_token
    assert not client.tasks.get_task("t1").HasField("complete_time")


def test_nan_in_a_pattern_context_names_a_key_that_is_not_an_identifier(make_client):
    client = make_client()

    error = error_of(
        client.staging.stage_pattern,
        pattern_id="p",
        pattern_type="t",
        name="n",
        confidence=0.5,
        context={"weird key": [{"n": NAN}]},
    )

    assert_non_finite(error, 'context["weird key"][0].n')
    assert error_of(client.staging.get_staged_pattern, "p").reason == "STAGED_PATTERN_NOT_FOUND"


def test_non_finite_numbers_in_memory_values_are_refused_before_writing(make_client):
    client = make_client()
    client.memory.create_session("s1")

    assert_non_finite(error_of(client.memory.stash, "k", {"v": NAN}), "value.v")
    assert_non_finite(error_of(client.memory.stash, "k", INF), "value")
    assert_non_finite(
        error_of(client.memory.batch_stash, {"k0": 1, "k1": {"x": [INF]}}), "items[1].value.x[0]"
    )
    assert_non_finite(
        error_of(client.memory.create_session, "s2", metadata={"m": -INF}), "metadata.m"
    )
    assert_non_finite(error_of(client.memory.share_context, "s1", "c", [NAN]), "value[0]")
    assert_non_finite(
        error_of(
            client.memory.save_collaboration_state, "s1", {"trust_level": 0.5, "extra": {"e": NAN}}
        ),
        "state.extra.e",
    )

    assert error_of(client.memory.retrieve, "k0").reason == "ENTRY_NOT_FOUND"
    assert error_of(client.memory.get_session, "s2").reason == "SESSION_NOT_FOUND"
    assert client.memory.get_shared_context("s1") == {}


def test_large_finite_numbers_are_still_accepted(make_client):
    client = make_client()
    value = {"big": 1.7976931348623157e308, "small": -5e-324, "list": [1e300, -1e300]}

    client.memory.stash("k", value)
    client.signals.send_signal("s", value)

    assert client.memory.retrieve("k") == value


# --- bodies that do not parse --------------------------------------------------------------


@pytest.fixture
def log_lines():
    out = io.StringIO()
    configure_logging("json", "info", stream=out)

    def lines() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]

    yield lines
    configure_logging("console", "info")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def nested_value(depth: int) -> bytes:
    """A google.protobuf.Value that is `depth` lists deep, built byte by byte (the protobuf
    library refuses to build one past its own limit)."""
    value = b"\x11" + b"\x00" * 8  # number_value 0.0
    for _ in range(depth):
        inner = b"\x0a" + _varint(len(value)) + value  # ListValue.values
        value = b"\x32" + _varint(len(inner)) + inner  # Value.list_value
    return value


def stash_with_deep_value(depth: int) -> bytes:
    value = nested_value(depth)
    return b"\x0a\x01k" + b"\x12" + _varint(len(value)) + value  # key "k", value


def invalid_utf8_signal() -> bytes:
    raw = signals_pb2.SendSignalRequest(signal_type="s").SerializeToString()
    return raw.replace(b"s", b"\xff")


def raw_call(channel: grpc.Channel, method: str, body: bytes, token: str, streaming=False):
    metadata = (("authorization", f"Bearer {token}"),)
    if streaming:
        call = channel.unary_stream(method)(body, metadata=metadata, timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call))
    else:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(method)(body, metadata=metadata, timeout=5)
    return info.value


MALFORMED = [
    ("/agentcoord.v1.TaskService/AddTask", b"\xff\xfe\xfd garbage", False),
    ("/agentcoord.v1.SignalService/SendSignal", invalid_utf8_signal(), False),
    ("/agentcoord.v1.MemoryService/Stash", stash_with_deep_value(150), False),
    ("/agentcoord.v1.SignalService/Subscribe", b"\x0a\x05ab", True),  # truncated
    ("/agentcoord.v1.TaskService/ListTasks", b"\x08", False),  # a tag with no value
]


@pytest.mark.parametrize(("method", "body", "streaming"), MALFORMED)
def test_a_body_that_does_not_parse_is_invalid_argument_with_request_id_and_log_line(
    server, credentials, log_lines, method, body, streaming
):
    token = credentials("agent-1", "STEWARD")["token"]
    with grpc.insecure_channel(server.address) as channel:
        rpc_error = raw_call(channel, method, body, token, streaming)
    error = AgentcoordError.from_rpc_error(rpc_error)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "MALFORMED_REQUEST"
    assert error.metadata["message_type"].startswith("agentcoord.v1.")
    request_id = error.request_id
    assert request_id and ("x-request-id", request_id) in rpc_error.trailing_metadata()
    deadline = time.monotonic() + 5
    while True:
        lines = [
            r for r in log_lines() if r.get("request_id") == request_id and r["event"] == "rpc"
        ]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert [(line["method"], line["code"]) for line in lines] == [(method, "INVALID_ARGUMENT")]


def test_a_stash_nested_just_within_the_limit_still_parses(server, credentials):
    token = credentials("agent-1")["token"]
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/agentcoord.v1.MemoryService/Stash")(
            stash_with_deep_value(40),  # 81 messages deep: under the limit of 100
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=5,
        )
    assert memory_pb2.StashResponse.FromString(raw).entry.key == "k"


def test_a_health_check_that_does_not_parse_is_invalid_argument(server):
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x80", timeout=5)

    error = AgentcoordError.from_rpc_error(info.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


def test_an_error_about_many_huge_invalid_fields_still_fits_in_the_trailers(make_client):
    # Field paths echo the request (positions['<agent id>']): uncut, this status was larger
    # than the 16 KiB of trailers a client accepts, and the caller got RESOURCE_EXHAUSTED
    # "metadata size exceeds hard limit" with no ErrorInfo.
    client = make_client()
    positions = {f"not an id {i} " * 1000: "x" for i in range(50)}

    error = error_of(client.staging.create_conflict, conflict_id="c1", positions=positions)

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert len(error.field_violations) == 8
    assert error.field_violations[-1] == ("…", "43 more fields are invalid")
    assert all(len(field.encode()) <= 160 for field, _ in error.field_violations)
    assert error.request_id


def test_the_issues_four_nan_fields_are_refused_without_a_logged_stack_trace(
    make_client, namespace, log_lines
):
    # Issue #12, failure 5, as written: these four came back INTERNAL with a stack trace logged
    # per request (json_format refuses NaN).
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="t")
    task = client.tasks.claim_task(task_types=["t"])
    assert task is not None
    calls = [
        lambda: client.signals.send_signal("s", {"x": NAN}),
        lambda: client.tasks.add_task(task_type="t", payload={"x": NAN}),
        lambda: client.tasks.complete_task(
            task_id="t1", fencing_token=task.lease.fencing_token, result={"x": INF}
        ),
        lambda: client.staging.stage_pattern(
            pattern_id="p", pattern_type="t", name="n", confidence=0.5, context={"x": -INF}
        ),
    ]

    errors = [error_of(call) for call in calls]

    assert [(e.code, e.reason) for e in errors] == [
        (grpc.StatusCode.INVALID_ARGUMENT, "NON_FINITE_NUMBER")
    ] * 4
    request_ids = {e.request_id for e in errors}
    deadline = time.monotonic() + 5
    while True:
        lines = [r for r in log_lines() if r.get("request_id") in request_ids]
        if len([r for r in lines if r["event"] == "rpc"]) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert sorted(r["event"] for r in lines) == ["rpc"] * 4  # no "unhandled error" with a trace
    assert {r["code"] for r in lines} == {"INVALID_ARGUMENT"}
