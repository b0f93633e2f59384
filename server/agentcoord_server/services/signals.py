"""SignalService: SendSignal, ReceiveSignals, Subscribe (proto/agentcoord/v1/signals.proto).

Storage is store/signals.py (one Redis stream per namespace); live delivery is
store/signal_fanout.py (one reader per namespace per process, bounded buffers per stream).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from agentcoord.v1 import signals_pb2, signals_pb2_grpc
from google.protobuf import json_format

from ..errors import invalid_field
from ..identity import current_principal
from ..store.keys import validate_id
from ..store.signal_fanout import Progress, SignalHub
from ..store.signals import SignalEntry, SignalStore, validate_cursor
from .values import checked_json, fitting, response_budget

if TYPE_CHECKING:
    from . import ServiceContext

PB2 = signals_pb2

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_SIGNAL_TYPES = 64

_HUBS: dict[int, SignalHub] = {}


def hub_for(ctx: ServiceContext) -> SignalHub:
    """The fan-out hub of the server owning `ctx` (tests and admin tooling inspect it)."""
    return _HUBS[id(ctx)]


def _validate_types(types: Sequence[str]) -> list[str]:
    if len(types) > MAX_SIGNAL_TYPES:
        raise invalid_field("signal_types", f"at most {MAX_SIGNAL_TYPES} types")
    for i, name in enumerate(types):
        validate_id(name, f"signal_types[{i}]")
    return list(types)


def to_signal(entry: SignalEntry) -> signals_pb2.Signal:
    """The wire form of a stored signal."""
    signal = signals_pb2.Signal(
        id=entry.id,
        signal_type=entry.signal_type,
        sender=entry.sender,
        target_agent=entry.target_agent,
        session_id=entry.session_id,
    )
    if entry.data:
        signal.data.update(entry.data)
    signal.send_time.FromMilliseconds(entry.send_time_ms)
    return signal


def _live_response(entry: SignalEntry) -> signals_pb2.SubscribeResponse:
    # A live entry is shared by every subscriber of its namespace: convert it once.
    if entry.cache is None:
        entry.cache = signals_pb2.SubscribeResponse(signal=to_signal(entry), cursor=entry.id)
    return entry.cache  # type: ignore[no-any-return]


class SignalServicer(signals_pb2_grpc.SignalServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._store = SignalStore(ctx.redis, ctx.settings.ttl.coordination)
        self._max_signal_bytes = ctx.settings.max_signal_bytes
        self._budget = response_budget(ctx.settings.max_message_bytes)
        self.hub = SignalHub(ctx.redis, self._store, ctx.settings.signal_queue_size, ctx.shutdown)

    async def SendSignal(
        self, request: signals_pb2.SendSignalRequest, context: grpc.aio.ServicerContext
    ) -> signals_pb2.SendSignalResponse:
        principal = current_principal()
        validate_id(request.signal_type, "signal_type")
        if request.target_agent:
            validate_id(request.target_agent, "target_agent")
        if request.session_id:
            validate_id(request.session_id, "session_id")
            if request.target_agent:
                raise invalid_field("session_id", "set target_agent or session_id, not both")
        if request.request_id:
            validate_id(request.request_id, "request_id")
        data: dict[str, Any] = {}
        if request.data.fields:
            checked_json(request.data, "data", self._max_signal_bytes, "--max-signal-bytes")
            data = json_format.MessageToDict(request.data)
        entry, replayed = await self._store.send(
            principal.namespace,
            principal.agent_id,
            request.signal_type,
            data,
            target_agent=request.target_agent,
            session_id=request.session_id,
            request_id=request.request_id,
        )
        return signals_pb2.SendSignalResponse(signal=to_signal(entry), replayed=replayed)

    async def ReceiveSignals(
        self, request: signals_pb2.ReceiveSignalsRequest, context: grpc.aio.ServicerContext
    ) -> signals_pb2.ReceiveSignalsResponse:
        principal = current_principal()
        types = _validate_types(request.signal_types)
        if request.after_id:
            validate_cursor(request.after_id, "after_id")
        if request.limit < 0:
            raise invalid_field("limit", "must not be negative")
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        page = await self._store.receive(
            principal.namespace, principal.agent_id, types, after=request.after_id, limit=limit
        )
        signals = [to_signal(e) for e in page.entries]
        next_after, more = page.next_after, page.more
        fit = fitting(signals, self._budget)
        if fit < len(signals):  # the rest come after the last signal sent
            signals, next_after, more = signals[:fit], signals[fit - 1].id, True
        return signals_pb2.ReceiveSignalsResponse(
            signals=signals, next_after_id=next_after, more=more
        )

    async def Subscribe(
        self, request: signals_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[signals_pb2.SubscribeResponse]:
        principal = current_principal()
        types = _validate_types(request.signal_types)
        after: str | None = None
        if request.after_id:
            validate_cursor(request.after_id, "after_id")
            if request.start != signals_pb2.START_POSITION_UNSPECIFIED:
                raise invalid_field("start", "set after_id or start, not both")
            after = request.after_id
        earliest = request.start == signals_pb2.START_POSITION_EARLIEST
        async with self.hub.subscribe(
            principal.namespace, principal.agent_id, types, after=after, earliest=earliest
        ) as subscription:
            context.add_done_callback(lambda _: subscription.close())
            yield signals_pb2.SubscribeResponse(cursor=subscription.start_cursor)
            async for item in subscription.entries():
                if isinstance(item, Progress):
                    yield signals_pb2.SubscribeResponse(cursor=item.cursor)
                else:
                    yield _live_response(item)


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    servicer = SignalServicer(ctx)
    _HUBS[id(ctx)] = servicer.hub
    weakref.finalize(ctx, _HUBS.pop, id(ctx), None)
    signals_pb2_grpc.add_SignalServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return signals_pb2.DESCRIPTOR.services_by_name["SignalService"].full_name
