"""SignalService calls: send_signal, receive_signals, subscribe (resuming automatically)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2

from agentcoord.v1 import signals_pb2, signals_pb2_grpc

from .._transport import AsyncTransport, async_sleep
from ..errors import AgentcoordError
from ._base import ServiceClient

# A subscription interrupted with one of these resumes from its last cursor: the server asked
# the client to come back (shutdown, Redis hiccup, or it fell behind and its buffer was dropped).
# Other RESOURCE_EXHAUSTED reasons (QUOTA_EXCEEDED: the namespace's live-subscriptions quota)
# are raised at once, as the Go and TypeScript clients do.
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
RESUMABLE_EXHAUSTED_REASONS = frozenset({"SUBSCRIBER_TOO_SLOW"})


def is_resumable(error: AgentcoordError) -> bool:
    """Whether a subscription that ended with `error` resumes from its cursor."""
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error.reason in RESUMABLE_EXHAUSTED_REASONS
    return error.code in RESUMABLE_CODES


class SignalsClient(ServiceClient):
    def __init__(self, transport: AsyncTransport) -> None:
        super().__init__(transport)
        self._stub = signals_pb2_grpc.SignalServiceStub(transport.channel)

    async def send_signal(
        self,
        signal_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        target_agent: str = "",
        session_id: str = "",
        request_id: str = "",
    ) -> signals_pb2.Signal:
        """Sends a signal as this client's agent and returns it with its id and send time.

        Broadcast to the namespace unless `target_agent` (only that agent sees it) or
        `session_id` (only the session's participants at send time see it) is given; the
        sender always sees its own signals. `data` is any JSON-like dict. CONTRIBUTOR or above.

        `request_id` (an id, e.g. `uuid.uuid4().hex`) makes a retry safe: a send with the
        same request_id from this agent within the server's COORDINATION retention (default
        5 minutes) stores nothing and returns the signal the first send stored.

        Raises AgentcoordError: INVALID_ARGUMENT for a bad id or both targets set (and
        NON_FINITE_NUMBER for NaN/±Infinity in `data`), NOT_FOUND (SESSION_NOT_FOUND) for a
        missing or expired session, RESOURCE_EXHAUSTED (VALUE_TOO_LARGE) for `data` over the
        server's --max-signal-bytes (default 1 MiB).
        """
        request = signals_pb2.SendSignalRequest(
            signal_type=signal_type,
            target_agent=target_agent,
            session_id=session_id,
            request_id=request_id,
        )
        if data:
            payload = struct_pb2.Struct()
            payload.update(data)
            request.data.CopyFrom(payload)
        response = await self._unary(self._stub.SendSignal, request)
        return response.signal  # type: ignore[no-any-return]

    async def receive_signals(
        self,
        signal_types: Iterable[str] = (),
        *,
        after_id: str = "",
        limit: int = 0,
    ) -> signals_pb2.ReceiveSignalsResponse:
        """The signals visible to this agent after `after_id` ('' = oldest retained), oldest
        first, at most `limit` (0: 100; at most 1000), only of `signal_types` if given.

        Non-destructive. Continue with `after_id=response.next_after_id`; `response.more` says
        whether the server stopped before the end. OBSERVER or above.

        Raises AgentcoordError: OUT_OF_RANGE (CURSOR_TRIMMED) if signals after `after_id`
        already left the retention window; INVALID_ARGUMENT for a malformed cursor or type.
        """
        request = signals_pb2.ReceiveSignalsRequest(
            signal_types=list(signal_types), after_id=after_id, limit=limit
        )
        return await self._unary(self._stub.ReceiveSignals, request)  # type: ignore[no-any-return]

    async def subscribe(
        self,
        signal_types: Iterable[str] = (),
        *,
        after_id: str = "",
        earliest: bool = False,
        max_retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> AsyncIterator[signals_pb2.Signal]:
        """Yields the signals visible to this agent, in send order, live, without end.

        Starts after `after_id` if given (resume with the id of the last signal you handled),
        else with the oldest retained signal if `earliest`, else with the next one sent.
        When the server ends the stream with UNAVAILABLE (it is shutting down, Redis blipped)
        or RESOURCE_EXHAUSTED (this reader fell behind), it resubscribes after the last cursor
        it saw, so nothing is lost or repeated: up to `max_retries` times in a row, sleeping
        `backoff` seconds doubled per retry (at most `max_backoff`). A retry counter resets
        whenever a response arrives. OBSERVER or above.

        Stop by breaking out of the loop and closing the iterator (its close method, or the
        contextlib closing helper); that cancels the call on the server at once.

        Raises AgentcoordError: OUT_OF_RANGE (CURSOR_TRIMMED) for a cursor older than the
        retention; RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) when the namespace already holds its
        quota of live subscriptions; the last error once retries are exhausted; any other
        failure at once.
        """
        types = list(signal_types)
        cursor = after_id
        retries = 0
        while True:
            request = signals_pb2.SubscribeRequest(
                signal_types=types, after_id=cursor, accept_batches=True
            )
            if not cursor and earliest:
                request.start = signals_pb2.START_POSITION_EARLIEST
            # The raw call rather than ServiceClient._stream, so that closing this iterator
            # cancels the server-side stream at once (sync and async alike).
            call = self._stub.Subscribe(request)
            try:
                async for response in call:
                    retries = 0
                    # A batch (several signals in one response) is handed out one signal at
                    # a time; its cursor is its last signal's id.
                    for signal in response.signals:
                        yield signal
                    if response.HasField("signal"):  # a server from before batching
                        yield response.signal
                    cursor = response.cursor or cursor
            except grpc.RpcError as rpc_error:
                error = AgentcoordError.from_rpc_error(rpc_error)
                if not is_resumable(error) or retries >= max_retries:
                    raise error from None
                await async_sleep(min(max_backoff, backoff * 2**retries))
                retries += 1
                continue
            finally:
                call.cancel()
            return
