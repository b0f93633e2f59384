"""The canonical log line: one JSON line per RPC with method, agent, namespace, code,
duration_ms and request_id, and nothing carried over from another call."""

from __future__ import annotations

import io
import json
import time

import pytest
from agentcoord import AgentcoordError, Client
from agentcoord_server.logs import configure_logging


@pytest.fixture
def log_lines():
    out = io.StringIO()
    configure_logging("json", "info", stream=out)

    def lines() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]

    yield lines
    configure_logging("console", "info")


def rpc_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line.get("event") == "rpc"]


def wait_for_lines(log_lines, matches, count: int, timeout: float = 5.0) -> list[dict]:
    """The server writes a call's line as its handler unwinds, just after the status is sent,
    so the last line can trail the client's answer by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in rpc_lines(log_lines()) if matches(r)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_each_rpc_writes_one_canonical_line(make_client, namespace, log_lines):
    make_client("reader-1", "OBSERVER").admin.who_am_i()

    (line,) = wait_for_lines(log_lines, lambda r: r.get("namespace") == namespace, 1)
    assert line["method"] == "/agentcoord.v1.AdminService/WhoAmI"
    assert (line["agent"], line["code"]) == ("reader-1", "OK")
    assert len(line["request_id"]) == 32
    assert isinstance(line["duration_ms"], float)


def test_a_call_after_an_authenticated_one_carries_none_of_its_identity(
    server, make_client, log_lines
):
    authenticated = make_client("reader-1", "OBSERVER")
    with Client(server.address, token="agc_not-a-real-token") as anonymous:
        for _ in range(5):  # same server, interleaved on its loop
            authenticated.admin.who_am_i()
            with pytest.raises(AgentcoordError):
                anonymous.admin.who_am_i()

    refused = wait_for_lines(log_lines, lambda r: r["code"] == "UNAUTHENTICATED", 5)
    assert len(refused) == 5
    assert all("agent" not in r and "namespace" not in r for r in refused)
    assert len({r["request_id"] for r in refused}) == 5


def test_tokens_and_payloads_never_reach_the_log(server, credentials, namespace, log_lines):
    payload = "payload-7f3a9c-never-logged"
    creds = credentials("writer-1", "CONTRIBUTOR")
    wrong_token = "agc_wrong-token-5b1e77-never-logged"
    with Client(server.address, **creds) as client:
        client.memory.stash("note", {"text": payload})
        assert client.memory.retrieve("note") == {"text": payload}
        with pytest.raises(AgentcoordError):
            client.memory.stash("bad:key", {"text": payload})  # refused: INVALID_ARGUMENT
    with Client(server.address, token=wrong_token) as anonymous, pytest.raises(AgentcoordError):
        anonymous.memory.retrieve("note")

    lines = wait_for_lines(log_lines, lambda r: r.get("code") == "UNAUTHENTICATED", 1)
    assert lines, "the refused call's canonical line was not written"
    # WhoAmI (the client's fail-fast tier check), stash, retrieve, the refused stash.
    assert len(wait_for_lines(log_lines, lambda r: r.get("namespace") == namespace, 4)) == 4
    text = json.dumps(log_lines())
    for secret in (creds["token"], wrong_token, payload):
        assert secret not in text
