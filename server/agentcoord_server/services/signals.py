"""SignalService: SendSignal, ReceiveSignals, Subscribe (proto/agentcoord/v1/signals.proto).

Storage is store/signals.py (one Redis stream per namespace); live delivery is
store/signal_fanout.py (one reader per namespace per process, bounded buffers per stream).

Subscribe writes pre-serialized responses: its handler is registered without a response
serializer (grpc then sends the bytes the handler yields as they are), and each signal is
encoded once however many streams carry it. A response is the concatenation of protobuf
records (repeated fields append, the last `cursor` wins), so a batch is a join of the
signals' cached records plus its cursor, with no per-stream serialization.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
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
BATCH_BYTES = 256 * 1024
"""A batched response stops growing past this many bytes of signals (it always holds one)."""

# Wire-format tags (field number << 3 | 2, length-delimited) of SubscribeResponse's fields.
_SIGNAL_TAG = b"\x0a"  # signal = 1
_SIGNALS_TAG = b"\x1a"  # signals = 3

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


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _cursor_only(cursor: str) -> bytes:
    """A serialized SubscribeResponse carrying only `cursor` (also the tail of a batch)."""
    return signals_pb2.SubscribeResponse(cursor=cursor).SerializeToString()


class _Wire:
    """An entry's encodings: `record` is one SubscribeResponse.signals element (tag, length,
    Signal) and `cursor` a cursor field with its id; `alone` a whole batched response holding
    just it, `single` a whole unbatched one (`signal` and `cursor`)."""

    __slots__ = ("alone", "cursor", "record", "single")

    def __init__(self, entry: SignalEntry) -> None:
        body = to_signal(entry).SerializeToString()
        length = _varint(len(body))
        self.cursor = _cursor_only(entry.id)
        self.record = _SIGNALS_TAG + length + body
        self.alone = self.record + self.cursor
        self.single = _SIGNAL_TAG + length + body + self.cursor


def _wire(entry: SignalEntry) -> _Wire:
    # A live entry is shared by every subscriber of its namespace: encode it once.
    wire = entry.cache
    if wire is None:
        wire = entry.cache = _Wire(entry)
    return wire  # type: ignore[no-any-return]


def _batches(entries: list[SignalEntry]) -> Iterator[bytes]:
    """Serialized SubscribeResponses carrying `entries` in `signals`, in order, each at most
    BATCH_BYTES of signals (or one signal), its cursor the id of its last signal."""
    if len(entries) == 1:  # the usual case: bytes shared by every stream that carries it
        yield _wire(entries[0]).alone
        return
    parts: list[bytes] = []
    size = 0
    last: _Wire | None = None
    for entry in entries:
        wire = _wire(entry)
        if last is not None and size + len(wire.record) > BATCH_BYTES:
            parts.append(last.cursor)
            yield b"".join(parts)
            parts, size = [], 0
        parts.append(wire.record)
        size += len(wire.record)
        last = wire
    if last is not None:
        parts.append(last.cursor)
        yield b"".join(parts)


class SignalServicer(signals_pb2_grpc.SignalServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._store = SignalStore(
            ctx.redis, ctx.settings.ttl.coordination, ctx.settings.quota_signals_per_second
        )
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

    async def Subscribe(  # type: ignore[override]  # yields bytes: registered without a serializer
        self, request: signals_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Yields serialized SubscribeResponses (see the module docstring)."""
        principal = current_principal()
        types = _validate_types(request.signal_types)
        after: str | None = None
        if request.after_id:
            validate_cursor(request.after_id, "after_id")
            if request.start != signals_pb2.START_POSITION_UNSPECIFIED:
                raise invalid_field("start", "set after_id or start, not both")
            after = request.after_id
        earliest = request.start == signals_pb2.START_POSITION_EARLIEST
        async with (
            self._ctx.live_subscriptions.hold(principal.namespace),
            self.hub.subscribe(
                principal.namespace, principal.agent_id, types, after=after, earliest=earliest
            ) as subscription,
        ):
            yield _cursor_only(subscription.start_cursor)
            batched = request.accept_batches
            async for item in subscription.entries():
                if isinstance(item, Progress):
                    yield _cursor_only(item.cursor)
                elif batched:
                    for message in _batches(item):
                        yield message
                else:
                    for entry in item:
                        yield _wire(entry).single


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    servicer = SignalServicer(ctx)
    _HUBS[id(ctx)] = servicer.hub
    weakref.finalize(ctx, _HUBS.pop, id(ctx), None)
    # As signals_pb2_grpc.add_SignalServiceServicer_to_server, but Subscribe has no response
    # serializer: grpc.aio writes the bytes its handler yields unchanged.
    handlers = {
        "SendSignal": grpc.unary_unary_rpc_method_handler(
            servicer.SendSignal,
            request_deserializer=PB2.SendSignalRequest.FromString,
            response_serializer=PB2.SendSignalResponse.SerializeToString,
        ),
        "ReceiveSignals": grpc.unary_unary_rpc_method_handler(
            servicer.ReceiveSignals,
            request_deserializer=PB2.ReceiveSignalsRequest.FromString,
            response_serializer=PB2.ReceiveSignalsResponse.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe,
            request_deserializer=PB2.SubscribeRequest.FromString,
            response_serializer=None,
        ),
    }
    name = PB2.DESCRIPTOR.services_by_name["SignalService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
    return name
