"""LockService calls (`client.locks`) and the held-lock helper (`client.lock(...)`).

Tiers: get_lock needs OBSERVER; acquiring, renewing and releasing one's own locks CONTRIBUTOR;
a forced release STEWARD. Durations are seconds (floats). Every failure raises AgentcoordError;
its `reason` tells the cases apart (LOCK_HELD, LOCK_NOT_HELD, LOCK_NOT_FOUND…).

Fencing (locks.proto): every acquisition's `fencing_token` is larger than any earlier one in
the namespace. Pass it to the resource the lock guards, which must refuse a token smaller than
the largest it has seen: a holder paused past its TTL is fenced out that way.
"""

from __future__ import annotations

from types import TracebackType

import grpc
from google.protobuf import duration_pb2

from agentcoord.v1 import locks_pb2, locks_pb2_grpc

from .._transport import AsyncTransport, async_monotonic, async_sleep
from ..errors import AgentcoordError
from ..lock_keeper import AsyncLockKeeper
from ._base import ServiceClient

MAX_WAIT = 60.0
"""The longest wait one AcquireLock call may ask for (seconds); `lock()` loops beyond it."""
UNAVAILABLE_PAUSE = 0.5
"""Seconds `lock()` pauses before trying again after UNAVAILABLE (e.g. a server stopping)."""


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


class LocksClient(ServiceClient):
    def __init__(self, transport: AsyncTransport) -> None:
        super().__init__(transport)
        self._stub = locks_pb2_grpc.LockServiceStub(transport.channel)

    async def acquire_lock(
        self, lock_id: str, *, ttl: float = 30.0, wait: float = 0.0
    ) -> locks_pb2.Lock:
        """Acquires `lock_id` for `ttl` seconds (1-3600), waiting up to `wait` seconds (0-60)
        while another acquisition holds it (this agent's own included: no re-entry). Returns
        the lock with its new `fencing_token`; the call's deadline is extended to cover the
        wait.

        Raises AgentcoordError: FAILED_PRECONDITION (LOCK_HELD; metadata "holder" and
        "expire_time") when the wait ran out.
        """
        request = locks_pb2.AcquireLockRequest(lock_id=lock_id, ttl=_duration(ttl))
        timeout = self._transport.timeout
        if wait > 0:
            request.wait.CopyFrom(_duration(wait))
            if timeout is not None:
                timeout = max(timeout, wait + 10.0)
        response = await self._unary(self._stub.AcquireLock, request, timeout=timeout)
        return response.lock  # type: ignore[no-any-return]

    async def renew_lock(
        self, lock_id: str, fencing_token: int, *, ttl: float = 30.0
    ) -> locks_pb2.Lock:
        """Restarts the TTL (`ttl` seconds from now) of a lock this agent holds under
        `fencing_token`.

        Raises AgentcoordError: FAILED_PRECONDITION (LOCK_NOT_HELD).
        """
        request = locks_pb2.RenewLockRequest(
            lock_id=lock_id, fencing_token=fencing_token, ttl=_duration(ttl)
        )
        response = await self._unary(self._stub.RenewLock, request)
        return response.lock  # type: ignore[no-any-return]

    async def release_lock(
        self, lock_id: str, fencing_token: int = 0, *, force: bool = False
    ) -> locks_pb2.Lock:
        """Releases a lock this agent holds under `fencing_token`, waking one waiter; with
        `force` (STEWARD only) whoever holds it. Returns the lock as it was held.

        Raises AgentcoordError: FAILED_PRECONDITION (LOCK_NOT_HELD); with force NOT_FOUND
        (LOCK_NOT_FOUND) or PERMISSION_DENIED (TIER_TOO_LOW).
        """
        request = locks_pb2.ReleaseLockRequest(
            lock_id=lock_id, fencing_token=fencing_token, force=force
        )
        response = await self._unary(self._stub.ReleaseLock, request)
        return response.lock  # type: ignore[no-any-return]

    async def get_lock(self, lock_id: str) -> locks_pb2.Lock:
        """Who holds `lock_id`, since and until when, under which fencing token.

        Raises AgentcoordError: NOT_FOUND (LOCK_NOT_FOUND) when nobody holds it.
        """
        request = locks_pb2.GetLockRequest(lock_id=lock_id)
        response = await self._unary(self._stub.GetLock, request)
        return response.lock  # type: ignore[no-any-return]

    def lock(self, lock_id: str, *, ttl: float = 30.0, wait: float | None = None) -> AsyncHeldLock:
        """The lock `lock_id`, held while a `with` block runs (`async with` on AsyncClient):
        `with client.locks.lock("file.auth.py", ttl=30) as held:` — see AsyncHeldLock."""
        return AsyncHeldLock(self, lock_id, ttl=ttl, wait=wait)


class AsyncHeldLock:
    """A lock held for the duration of a `with` block (`async with` on AsyncClient), renewed in
    the background every `ttl`/3 seconds and released at the block's end.

    Entering waits for the lock: up to `wait` seconds (None: as long as it takes, in AcquireLock
    calls of at most 60 s each), then raises AgentcoordError (LOCK_HELD). Inside the block,
    `held.lock` is the Lock and `held.fencing_token` its token: hand it to the resource.

    If the lock is lost while the block runs (a renewal answered LOCK_NOT_HELD, or no renewal
    succeeded within `ttl`), the asyncio flavour cancels the block at once and it ends with
    that AgentcoordError (LOCK_NOT_HELD) instead of CancelledError; the sync flavour cannot
    interrupt a thread, so it raises the loss when the block ends. `lost` tells either way.
    A release that fails otherwise (e.g. UNAVAILABLE) is not raised: the lock lapses at its TTL.
    """

    def __init__(
        self, locks: LocksClient, lock_id: str, *, ttl: float = 30.0, wait: float | None = None
    ) -> None:
        self._locks = locks
        self.lock_id = lock_id
        self._ttl = ttl
        self._wait = wait
        self.lock: locks_pb2.Lock | None = None
        self._keeper: AsyncLockKeeper | None = None

    @property
    def fencing_token(self) -> int:
        """The held acquisition's fencing token (0 before the block is entered)."""
        return self.lock.fencing_token if self.lock is not None else 0

    @property
    def lost(self) -> bool:
        """True once the lock was lost while held."""
        return self._keeper is not None and self._keeper.lost is not None

    async def _acquire(self) -> locks_pb2.Lock:
        deadline = None if self._wait is None else async_monotonic() + self._wait
        while True:
            left = MAX_WAIT if deadline is None else max(0.0, deadline - async_monotonic())
            try:
                return await self._locks.acquire_lock(
                    self.lock_id, ttl=self._ttl, wait=min(left, MAX_WAIT)
                )
            except AgentcoordError as exc:
                again = exc.reason == "LOCK_HELD" or exc.code == grpc.StatusCode.UNAVAILABLE
                if not again or (deadline is not None and async_monotonic() >= deadline):
                    raise
                if exc.code == grpc.StatusCode.UNAVAILABLE:
                    await async_sleep(UNAVAILABLE_PAUSE)

    async def _renew(self) -> None:
        self.lock = await self._locks.renew_lock(self.lock_id, self.fencing_token, ttl=self._ttl)

    async def __aenter__(self) -> AsyncHeldLock:
        self.lock = await self._acquire()
        self._keeper = AsyncLockKeeper(self._renew, self._ttl / 3, self._ttl)
        self._keeper.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._keeper is not None
        lost = await self._keeper.stop(exc)
        if lost is not None:
            raise lost
        try:
            await self._locks.release_lock(self.lock_id, self.fencing_token)
        except AgentcoordError as error:
            # LOCK_NOT_HELD: it expired after the last renewal, so the end of the block ran
            # unprotected. Any other failure (e.g. UNAVAILABLE) is not the block's problem: the
            # lock lapses at its TTL.
            if exc is None and error.reason == "LOCK_NOT_HELD":
                raise
