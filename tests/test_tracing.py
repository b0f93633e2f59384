"""OpenTelemetry tracing against a real server: a SERVER span per RPC continuing the caller's
W3C trace context (the Python client injects it), CLIENT child spans for Redis scripts, and the
trace id in the canonical log line. Spans are caught by an in-memory exporter."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
from agentcoord import AgentcoordError, Client
from agentcoord_server.logs import configure_logging
from agentcoord_server.tracing import enabled_by_environment
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from .conftest import server_settings
from .support import ServerThread


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced_server(redis_url: str, exporter: InMemorySpanExporter) -> Iterator[ServerThread]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = ServerThread(server_settings(redis_url), tracer_provider=provider).start()
    yield handle
    handle.stop()


@pytest.fixture
def caller_tracer():
    """The caller's own tracer (its own provider; the client injects from the current context)."""
    return TracerProvider().get_tracer("test-caller")


def spans_of(exporter: InMemorySpanExporter, trace_id: int, *server_spans: str, timeout: float = 5.0):
    """The spans of a trace once the named SERVER spans have ended: the server ends a call's
    span as its handler unwinds, just after the client has its answer (and after the call's
    Redis spans)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        ended = {s.name for s in spans if s.kind == SpanKind.SERVER}
        if ended >= set(server_spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def test_server_span_continues_the_callers_trace_with_redis_script_children(
    traced_server, exporter, caller_tracer, namespace
):
    token = traced_server.issue_token("adder", "CONTRIBUTOR", namespace)
    with Client(traced_server.address, token=token) as client:
        with caller_tracer.start_as_current_span("caller") as caller:
            client.tasks.add_task(task_type="build", task_id="t1")

    trace_id = caller.get_span_context().trace_id
    # the client's principal lookup (WhoAmI, for its tier check) is part of the trace too
    spans = spans_of(
        exporter, trace_id, "agentcoord.v1.AdminService/WhoAmI", "agentcoord.v1.TaskService/AddTask"
    )
    names = sorted(s.name for s in spans if s.kind == SpanKind.SERVER)
    assert names == ["agentcoord.v1.AdminService/WhoAmI", "agentcoord.v1.TaskService/AddTask"]
    (server_span,) = [s for s in spans if s.name == "agentcoord.v1.TaskService/AddTask"]
    assert server_span.parent.span_id == caller.get_span_context().span_id
    assert server_span.attributes["rpc.system"] == "grpc"
    assert server_span.attributes["rpc.method"] == "AddTask"
    assert server_span.attributes["rpc.grpc.status_code"] == 0
    children = [s for s in spans if s.parent and s.parent.span_id == server_span.context.span_id]
    # (a token lookup, HGETALL, may be among them when the auth cache had lapsed)
    scripts = [s for s in children if s.attributes.get("db.operation") == "EVALSHA"]
    assert [s.name for s in scripts] == ["redis tasks_add"]
    assert scripts[0].kind == SpanKind.CLIENT
    assert scripts[0].attributes["db.redis.script"] == "tasks_add"


def test_a_failed_call_records_its_status_code(traced_server, exporter, caller_tracer, namespace):
    token = traced_server.issue_token("reader", "OBSERVER", namespace)
    with Client(traced_server.address, token=token) as client:
        with caller_tracer.start_as_current_span("caller") as caller:
            with pytest.raises(AgentcoordError):
                client.tasks.get_task("missing")

    spans = spans_of(exporter, caller.get_span_context().trace_id, "agentcoord.v1.TaskService/GetTask")
    (span,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert span.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND
    assert span.status.status_code != StatusCode.ERROR  # a client error, not the server's


def test_the_canonical_log_line_carries_the_trace_id(traced_server, caller_tracer, namespace):
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        token = traced_server.issue_token("reader", "OBSERVER", namespace)
        with Client(traced_server.address, token=token) as client:
            with caller_tracer.start_as_current_span("caller") as caller:
                client.admin.who_am_i()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                lines = [json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{")]
                rpc = [x for x in lines if x.get("event") == "rpc" and x.get("namespace") == namespace]
                if rpc:
                    break
                time.sleep(0.01)
    finally:
        configure_logging("console", "info")

    assert rpc[0]["trace_id"] == f"{caller.get_span_context().trace_id:032x}"


def test_tracing_is_off_without_otel_environment_and_installs_nothing(server):
    assert not enabled_by_environment({})
    assert enabled_by_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert not enabled_by_environment(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"}
    )
    assert server.server.tracing is None
