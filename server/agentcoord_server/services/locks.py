"""LockService: AcquireLock, RenewLock, ReleaseLock, GetLock
(proto/agentcoord/v1/locks.proto → here → store/locks.py + store/lua/locks_*.lua).

Thin: validate the request, one store call, build the response. Bounds (INVALID_ARGUMENT with a
field violation, nothing written): lock ids are ids, TTLs 1 s..1 h (unset → 30 s), waits
0..60 s (as ClaimTask's), fencing tokens positive. A forced release needs a STEWARD (the
contract's rule for `force`; the method itself is CONTRIBUTOR).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from agentcoord.v1 import access_pb2, locks_pb2, locks_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ..errors import PermissionDenied, invalid_field
from ..identity import current_principal
from ..store import locks as store
from ..store.keys import validate_id

if TYPE_CHECKING:
    from . import ServiceContext

PB2 = locks_pb2

DEFAULT_TTL_MS = 30 * 1000
MIN_TTL_MS, MAX_TTL_MS = 1000, 3600 * 1000
MAX_WAIT_MS = 60 * 1000
DEADLINE_MARGIN_SECONDS = 0.25
"""A waiting AcquireLock answers this long before the call's deadline: an acquisition that
succeeded after the caller gave up would hold the lock for nobody until its TTL ran out."""


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def lock_proto(rec: store.LockRecord) -> locks_pb2.Lock:
    return locks_pb2.Lock(
        lock_id=rec.lock_id,
        holder=rec.holder,
        fencing_token=rec.fencing_token,
        acquire_time=_ts(rec.acquire_ms),
        expire_time=_ts(rec.expire_ms),
    )


def _duration_ms(
    request: object, field: str, *, default: int, low: int, high: int, what: str
) -> int:
    """The Duration field `field` in ms, `default` when unset; InvalidArgument outside
    [low, high] ms."""
    if not request.HasField(field):  # type: ignore[attr-defined]
        return default
    value: duration_pb2.Duration = getattr(request, field)
    ms = value.ToMilliseconds()
    if ms < low or ms > high or value.nanos < 0 or value.seconds < 0:
        raise invalid_field(field, what)
    return ms


def _ttl_ms(request: object) -> int:
    return _duration_ms(
        request,
        "ttl",
        default=DEFAULT_TTL_MS,
        low=MIN_TTL_MS,
        high=MAX_TTL_MS,
        what="must be 1 s to 1 h",
    )


def _token(value: int) -> int:
    if value <= 0:
        raise invalid_field("fencing_token", "must be the positive token of an acquisition")
    return value


class LockServicer(locks_pb2_grpc.LockServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._store = store.LockStore(ctx.redis, shutdown=ctx.shutdown)

    async def AcquireLock(
        self, request: locks_pb2.AcquireLockRequest, context: grpc.aio.ServicerContext
    ) -> locks_pb2.AcquireLockResponse:
        lock_id = validate_id(request.lock_id, "lock_id")
        ttl_ms = _ttl_ms(request)
        wait = (
            _duration_ms(
                request, "wait", default=0, low=0, high=MAX_WAIT_MS, what="must be 0 to 60 s"
            )
            / 1000
        )
        left = context.time_remaining()
        if left is not None:
            wait = max(0.0, min(wait, left - DEADLINE_MARGIN_SECONDS))
        p = current_principal()
        rec = await self._store.acquire(
            p.namespace, p.agent_id, lock_id, ttl_ms=ttl_ms, wait_seconds=wait
        )
        return locks_pb2.AcquireLockResponse(lock=lock_proto(rec))

    async def RenewLock(
        self, request: locks_pb2.RenewLockRequest, context: grpc.aio.ServicerContext
    ) -> locks_pb2.RenewLockResponse:
        lock_id = validate_id(request.lock_id, "lock_id")
        token = _token(request.fencing_token)
        ttl_ms = _ttl_ms(request)
        p = current_principal()
        rec = await self._store.renew(p.namespace, p.agent_id, lock_id, token, ttl_ms)
        return locks_pb2.RenewLockResponse(lock=lock_proto(rec))

    async def ReleaseLock(
        self, request: locks_pb2.ReleaseLockRequest, context: grpc.aio.ServicerContext
    ) -> locks_pb2.ReleaseLockResponse:
        lock_id = validate_id(request.lock_id, "lock_id")
        p = current_principal()
        if request.force:
            if p.tier < access_pb2.ACCESS_TIER_STEWARD:
                raise PermissionDenied(
                    "only a STEWARD may force-release a lock",
                    reason="TIER_TOO_LOW",
                    metadata={
                        "required_tier": "STEWARD",
                        "caller_tier": access_pb2.AccessTier.Name(p.tier).removeprefix(  # type: ignore[arg-type]
                            "ACCESS_TIER_"
                        ),
                    },
                )
            token = 0
        else:
            token = _token(request.fencing_token)
        rec = await self._store.release(
            p.namespace, p.agent_id, lock_id, token, force=request.force
        )
        return locks_pb2.ReleaseLockResponse(lock=lock_proto(rec))

    async def GetLock(
        self, request: locks_pb2.GetLockRequest, context: grpc.aio.ServicerContext
    ) -> locks_pb2.GetLockResponse:
        lock_id = validate_id(request.lock_id, "lock_id")
        rec = await self._store.get(current_principal().namespace, lock_id)
        return locks_pb2.GetLockResponse(lock=lock_proto(rec))


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    locks_pb2_grpc.add_LockServiceServicer_to_server(LockServicer(ctx), server)  # type: ignore[no-untyped-call]
    return locks_pb2.DESCRIPTOR.services_by_name["LockService"].full_name
