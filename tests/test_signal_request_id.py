"""SendSignal with a request_id is stored once however often it is retried (issue #12)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from agentcoord import AgentcoordError


async def test_concurrent_retries_with_one_request_id_store_one_signal(make_aclient):
    sender = make_aclient("sender", "CONTRIBUTOR")
    request_id = str(uuid.uuid4())

    sent = await asyncio.gather(
        *(sender.signals.send_signal("done", {"n": 1}, request_id=request_id) for _ in range(8))
    )

    assert len({signal.id for signal in sent}) == 1
    assert all(signal.sender == "sender" and signal.data["n"] == 1 for signal in sent)
    stored = await sender.signals.receive_signals()
    assert [s.id for s in stored.signals] == [sent[0].id]


async def test_request_id_is_scoped_to_the_sender_and_absent_means_every_send_is_stored(
    make_aclient,
):
    first, second = make_aclient("first"), make_aclient("second")

    a = await first.signals.send_signal("done", request_id="r1")
    b = await second.signals.send_signal("done", request_id="r1")
    c = await first.signals.send_signal("done")
    d = await first.signals.send_signal("done")

    assert len({a.id, b.id, c.id, d.id}) == 4
    assert len((await first.signals.receive_signals()).signals) == 4


def test_a_request_id_that_is_not_an_id_is_invalid(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client().signals.send_signal("done", request_id="not an id")

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_ID"
    assert caught.value.field_violations[0][0] == "request_id"
