"""Subscribe batching: several signals per response for clients that accept batches, one per
response (in the old `signal` field) for clients that do not, and clients unpacking batches
in order. Real server, real Redis, real streams.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from agentcoord.v1 import signals_pb2, signals_pb2_grpc

from .test_signals_stream import TIMEOUT, take


async def responses_until(call: Any, count: int) -> list[signals_pb2.SubscribeResponse]:
    """Reads responses (after the first, cursor-only one) until they carry `count` signals."""
    got: list[signals_pb2.SubscribeResponse] = []

    async def run() -> None:
        await call.read()
        carried = 0
        while carried < count:
            response = await call.read()
            assert response is not grpc.aio.EOF
            got.append(response)
            carried += len(response.signals) + response.HasField("signal")

    await asyncio.wait_for(run(), TIMEOUT)
    return got


async def send_all(client: Any, count: int, **data: Any) -> list[str]:
    return [(await client.signals.send_signal("n", {"n": n, **data})).id for n in range(count)]


async def test_the_client_unpacks_batches_in_order_without_loss_or_duplicate(make_aclient):
    alice, bob = make_aclient("alice"), make_aclient("bob", "OBSERVER")
    anchor = await alice.signals.send_signal("start")
    stored = await send_all(alice, 40)  # the catch-up reads these as one page: one batch
    stream = bob.signals.subscribe(after_id=anchor.id)
    first = await take(stream, 1)
    live = await asyncio.gather(*(alice.signals.send_signal("n", {"n": n}) for n in range(60)))
    rest = await take(stream, 99)
    await stream.aclose()

    expected = sorted([*stored, *(s.id for s in live)], key=lambda i: tuple(map(int, i.split("-"))))
    assert [s.id for s in [*first, *rest]] == expected


async def test_a_stalled_reader_gets_what_queued_up_in_batches(server, credentials, make_aclient):
    alice = make_aclient("alice")
    anchor = await alice.signals.send_signal("start")
    token = credentials("bob", "OBSERVER")["token"]
    # No window growth: the server soon cannot write to a reader that does not read, and the
    # signals sent meanwhile wait in bob's server-side buffer.
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        call = signals_pb2_grpc.SignalServiceStub(channel).Subscribe(
            signals_pb2.SubscribeRequest(after_id=anchor.id, accept_batches=True),
            metadata=[("authorization", f"Bearer {token}")],
        )
        sent = await send_all(alice, 60, blob="x" * 32_768)
        responses = await responses_until(call, len(sent))
        call.cancel()

    assert [s.id for r in responses for s in r.signals] == sent
    assert all(r.cursor == r.signals[-1].id and not r.HasField("signal") for r in responses)
    assert max(len(r.signals) for r in responses) > 1


async def test_a_client_that_does_not_accept_batches_gets_one_signal_per_response(
    server, credentials, make_aclient
):
    alice = make_aclient("alice")
    anchor = await alice.signals.send_signal("start")
    sent = await send_all(alice, 20)
    token = credentials("bob", "OBSERVER")["token"]
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = signals_pb2_grpc.SignalServiceStub(channel).Subscribe(
            signals_pb2.SubscribeRequest(after_id=anchor.id),
            metadata=[("authorization", f"Bearer {token}")],
        )
        responses = await responses_until(call, len(sent))
        call.cancel()

    assert [r.signal.id for r in responses] == sent
    assert all(r.cursor == r.signal.id and not r.signals for r in responses)
